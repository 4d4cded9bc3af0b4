"""Submitting batches in-process (serve_app/batches.py with an in-memory log and store and a fake
router): a batch's items are what POST /tasks takes (pinned versions, raw graphs, models by URL,
images) with its checks, and a refused batch records nothing and leaves no input stored."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_fleet import errors
from comfy_fleet.config import REPO_ROOT
from comfy_fleet.log import events
from comfy_fleet.policies import access
from serve_app import batches, model_inputs, submission
from serve_app.batch_items import BatchRequest
from serve_app.services import Services
from tests.unit.test_raw_graph_submission import SOLID
from tests.unit.test_raw_graph_submission import services as raw_graph_services

GRAPH = SOLID
SHA = hashlib.sha256(b"a lora").hexdigest()


def services(folder: Path, **env: str) -> Services:
    """In-memory services serving copies of three shipped workflows (so a test may edit them)."""
    for name in ("solid", "invert", "text2img"):
        for suffix in (".json", ".toml"):
            shutil.copy(REPO_ROOT / "workflows" / f"{name}{suffix}", folder / f"{name}{suffix}")
    return raw_graph_services(folder, workflows=folder, **env)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Model fetches without a network: `liar` URLs have another sha256."""
    calls: list[str] = []

    async def fake_fetch(svc: Any, url: str, sha: str, key: str) -> events.TaskModelFetched:
        calls.append(url)
        if "liar" in url:
            raise errors.ModelChecksumMismatch(f"{url} has another sha256", {"expected": sha})
        await svc.store.put(key, b"a lora", model_inputs.CONTENT_TYPE)
        return events.TaskModelFetched(sha256=sha, bytes=6, seconds=0.01)

    monkeypatch.setattr(model_inputs, "fetch_into_bucket", fake_fetch)
    return calls


def png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def submit(s: Services, principal: Any = access.ADMIN, **body: Any) -> Any:
    state, _ = await batches.submit(s, BatchRequest(tenant="default", principal=principal, **body))
    return state


async def recorded(s: Services) -> int:
    return len((await s.log.list_tasks())[0])


async def test_raw_graphs_pinned_versions_and_models_by_url_in_one_batch(
    tmp_path: Path, fetches: list[str]
) -> None:
    s = services(tmp_path)
    old = s.registry.get("solid").version
    single, _ = await submission.submit(  # stores the version the batch pins below
        s, workflow_name="solid", params={}, client_task_id=None, callback_url=None,
        priority=0, tenant="default",
    )
    graph = (tmp_path / "solid.json").read_text()
    (tmp_path / "solid.json").write_text(graph.replace('"solid"', '"changed"'))
    s.registry.reload()
    assert s.registry.get("solid").version != old
    lora = {"url": "https://models.example/style.safetensors", "sha256": SHA}
    batch = await submit(s, tasks=[
        {"workflow": "solid", "workflow_version": old},
        {"graph": GRAPH, "client_task_id": "g-1"},
        {"workflow": "text2img", "params": {"text": "a", "lora": lora}},
        {"workflow": "text2img", "params": {"text": "b", "lora": lora}},
        {"workflow": "solid"},
    ])
    tasks = [await s.log.get(t) for t in batch.task_ids]
    assert [t.workflow for t in tasks] == ["solid", "graph", "text2img", "text2img", "solid"]
    assert tasks[0].workflow_version == old == single.workflow_version
    assert tasks[4].workflow_version == s.registry.get("solid").version
    assert tasks[1].prompt["2"]["inputs"]["filename_prefix"] == f"fleet/{tasks[1].task_id}/s"
    assert tasks[1].required_labels == ["node:EmptyImage", "node:SaveImage"]
    assert tasks[2].models == tasks[3].models and tasks[2].models[0]["sha256"] == SHA
    assert f"model:{SHA}" in tasks[3].required_labels
    # fetched once, for the first task that named it, and recorded with that task
    assert fetches == [lora["url"]]
    streams = [[e.type for e in await s.log.read(t)] for t in batch.task_ids]
    assert streams[2] == ["task.submitted", "task.model_fetched"]
    assert all(types == ["task.submitted"] for i, types in enumerate(streams) if i != 2)
    assert all(t.batch_id == batch.batch_id and t.status == "queued" for t in tasks)
    # a sweep pins its workflow's version for every task
    swept = await submit(s, workflow="solid", sweep={"width": [1, 2]}, workflow_version=old)
    assert {(await s.log.get(t)).workflow_version for t in swept.task_ids} == {old}


async def test_an_items_refusal_names_it_and_records_nothing(
    tmp_path: Path, fetches: list[str]
) -> None:
    s = services(tmp_path, RAW_GRAPH_ALLOW_NODES="EmptyImage,SaveImage")
    ok = {"workflow": "solid"}
    unknown_class = {**GRAPH, "7": {"class_type": "NopeNode", "inputs": {}}}
    with pytest.raises(errors.GraphInvalid) as bad_graph:
        await submit(s, tasks=[ok, {"graph": unknown_class}])
    assert bad_graph.value.details["index"] == 1 and bad_graph.value.details["node_id"] == "7"
    with pytest.raises(errors.WorkflowVersionUnknown) as unknown:
        await submit(s, tasks=[ok, ok, {"workflow": "solid", "workflow_version": "0" * 16}])
    assert unknown.value.status == 409 and unknown.value.details["index"] == 2
    with pytest.raises(errors.WorkflowVersionUnknown) as swept:
        await submit(s, workflow="solid", sweep={"width": [1, 2]}, workflow_version="0" * 16)
    assert swept.value.details["index"] == 0
    with pytest.raises(errors.RawGraphsDisabled) as tenant_key:
        await submit(s, principal=access.Principal("default"), tasks=[ok, {"graph": GRAPH}])
    assert tenant_key.value.status == 403 and tenant_key.value.details["index"] == 1
    assert await recorded(s) == 0 and s.store.objects == {}  # type: ignore[union-attr]


async def test_a_refused_model_or_image_leaves_no_input_stored(
    tmp_path: Path, fetches: list[str]
) -> None:
    s = services(tmp_path)
    with_image = {"workflow": "invert", "params": {"image": png()}}
    liar = {"url": "https://models.example/liar.safetensors", "sha256": SHA}
    # models are staged for every task before any image is stored
    with pytest.raises(errors.ModelChecksumMismatch) as mismatch:
        await submit(s, tasks=[with_image, {"workflow": "text2img",
                                            "params": {"text": "a", "lora": liar}}])
    assert mismatch.value.status == 422 and mismatch.value.details["index"] == 1
    assert s.store.objects == {}  # type: ignore[union-attr]
    # an image refused after earlier tasks' images were stored: those are deleted again
    broken = {"workflow": "invert", "params": {"image": base64.b64encode(b"no").decode()}}
    with pytest.raises(errors.InputRejected) as rejected:
        await submit(s, tasks=[with_image, with_image, broken])
    assert rejected.value.details["index"] == 2
    assert s.store.objects == {}  # type: ignore[union-attr]
    assert await recorded(s) == 0
    # and accepted, each task's inputs are its own
    batch = await submit(s, tasks=[with_image, with_image])
    keys = [(await s.log.get(t)).inputs[0]["s3_key"] for t in batch.task_ids]
    assert len(set(keys)) == 2 and all(k in s.store.objects for k in keys)  # type: ignore[union-attr]
