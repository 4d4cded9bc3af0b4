"""Submitting raw graphs in-process (serve_app/submission.py with an in-memory log and store and a
fake router): who may, what is recorded, and that a refusal records nothing."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from comfy_fleet import errors
from comfy_fleet.config import REPO_ROOT, Settings
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.workflows import raw_graph
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app import submission
from serve_app.services import Services

INFO = raw_graph.normalised(json.loads(
    (Path(__file__).resolve().parents[2] / "comfy_standin/data/object_info_full.json").read_text()
))
DIGEST = raw_graph.digest(INFO)
SOLID = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}},
}
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}


class FakeRouter:
    def __init__(self) -> None:
        self.catalog_calls = 0

    async def stats(self) -> dict[str, Any]:
        return {"waiting": 0, "endpoints": {}}

    async def node_catalog(self, digest: str) -> dict[str, Any] | None:
        self.catalog_calls += 1
        return {"digest": DIGEST, "object_info": INFO} if digest == DIGEST else None


def services(tmp_path: Path, workflows: Path = REPO_ROOT / "workflows", **env: str) -> Services:
    settings = Settings.from_env({"RAW_GRAPHS": "true", **env}, dotenv=tmp_path / "none")
    registry, _ = WorkflowRegistry.load(workflows)
    s = Services(
        settings=settings, log=InMemoryEventLog(), store=InMemoryBlobStore(), registry=registry,
        router=FakeRouter(),  # type: ignore[arg-type]
        webhooks=None,  # type: ignore[arg-type]
        url_policy=UrlPolicy.from_settings(settings),
    )
    s.node_catalog.observe({"127.0.0.1:8188": {"node_info_digest": DIGEST}})
    return s


async def submit(s: Services, graph: Any, *, files: dict[str, Any] | None = None,
                 principal: Any = None, client_task_id: str | None = None) -> Any:
    return await submission.submit(
        s, workflow_name="graph", params={}, client_task_id=client_task_id, callback_url=None,
        priority=0, graph=graph, files=files, principal=principal,
        tenant=getattr(principal, "tenant", None) or "default",
    )


async def recorded(s: Services) -> int:
    return len((await s.log.list_tasks())[0])


def png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def test_off_by_default_names_the_setting(tmp_path: Path) -> None:
    s = services(tmp_path, RAW_GRAPHS="false")
    with pytest.raises(errors.RawGraphsDisabled) as caught:
        await submit(s, SOLID)
    assert caught.value.status == 403 and caught.value.details == {"setting": "RAW_GRAPHS"}
    assert "RAW_GRAPHS" in caught.value.message and await recorded(s) == 0


async def test_tenant_keys_only_when_allowed(tmp_path: Path) -> None:
    tenant = SimpleNamespace(is_admin=False)
    s = services(tmp_path)
    with pytest.raises(errors.RawGraphsDisabled) as caught:
        await submit(s, SOLID, principal=tenant)
    assert caught.value.details == {"setting": "RAW_GRAPHS_TENANTS"}
    assert await recorded(s) == 0
    s = services(tmp_path, RAW_GRAPHS_TENANTS="true")
    _state, created = await submit(s, SOLID, principal=tenant)
    assert created


async def test_a_graph_is_recorded_with_its_classes_and_the_node_info_fetched_once(
    tmp_path: Path,
) -> None:
    s = services(tmp_path)
    state, created = await submit(s, SOLID, client_task_id="g-1")
    assert created and state.workflow == "graph" and state.params == {}
    assert state.required_labels == ["node:EmptyImage", "node:SaveImage"]
    assert state.prompt["2"]["inputs"]["filename_prefix"] == f"fleet/{state.task_id}/s"
    assert state.workflow_version == raw_graph.digest(SOLID)
    again, created = await submit(s, SOLID, client_task_id="g-1")
    assert not created and again.task_id == state.task_id
    with pytest.raises(errors.IdempotencyConflict):
        await submit(s, {**SOLID, "3": SOLID["2"]}, client_task_id="g-1")
    assert s.router.catalog_calls == 1  # type: ignore[attr-defined]


async def test_refusals_record_nothing(tmp_path: Path) -> None:
    s = services(tmp_path, RAW_GRAPH_ALLOW_NODES="EmptyImage,SaveImage,LoadImage")
    unknown = {**SOLID, "7": {"class_type": "NopeNode", "inputs": {}}}
    broken = {**SOLID, "2": {"class_type": "SaveImage",
                             "inputs": {"images": ["9", 0], "filename_prefix": "s"}}}
    for graph, node, files in ((unknown, "7", None), (broken, "2", None), (INVERT, "2", {"in.png": png()})):
        with pytest.raises(errors.GraphInvalid) as caught:
            await submit(s, graph, files=files)
        assert caught.value.details["node_id"] == node
    with pytest.raises(errors.InputRejected) as bad_file:
        await submit(s, {k: v for k, v in INVERT.items() if k != "2"} | {
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }, files={"in.png": base64.b64encode(b"not an image").decode()})
    assert bad_file.value.message.startswith("files.in.png: ")
    assert await recorded(s) == 0 and s.store.objects == {}  # type: ignore[union-attr]


async def test_no_node_info_yet_is_a_503(tmp_path: Path) -> None:
    s = services(tmp_path)
    s.node_catalog.observe({})
    with pytest.raises(errors.EndpointUnavailable):
        await submit(s, SOLID)
    assert await recorded(s) == 0


async def test_files_are_staged_and_named_in_the_prompt(tmp_path: Path) -> None:
    s = services(tmp_path)
    state, _ = await submit(s, INVERT, files={"in.png": png()})
    [staged] = state.inputs
    assert staged["param"] == "in.png" and staged["filename"] == f"fleet/{state.task_id}-0.png"
    assert state.prompt["1"]["inputs"]["image"] == staged["filename"]
    assert staged["s3_key"] in s.store.objects  # type: ignore[union-attr]


async def test_a_graph_naming_a_model_file_needs_an_endpoint_listing_it(tmp_path: Path) -> None:
    from comfy_standin import validation

    info = raw_graph.normalised(
        validation.Catalogue.load({"checkpoints": ["base.safetensors"]}).object_info())
    digest = raw_graph.digest(info)

    class HoldingRouter(FakeRouter):
        async def node_catalog(self, wanted: str) -> dict[str, Any] | None:
            return {"digest": digest, "object_info": info} if wanted == digest else None

    s = services(tmp_path)
    s.router = HoldingRouter()  # type: ignore[assignment]
    s.node_catalog.observe({"127.0.0.1:8188": {"node_info_digest": digest}})
    graph = {**SOLID, "9": {"class_type": "CheckpointLoaderSimple",
                            "inputs": {"ckpt_name": "base.safetensors"}}}
    state, _created = await submit(s, graph)
    assert state.required_labels == [
        "node:CheckpointLoaderSimple", "node:EmptyImage", "node:SaveImage",
        "file:checkpoints/base.safetensors"]
    assert state.model_files == [
        {"node_id": "9", "folder": "checkpoints", "filename": "base.safetensors"}]
