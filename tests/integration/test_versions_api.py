"""Workflow versions and reruns at the HTTP API, in process: the app over a real PostgreSQL log,
an in-memory blob store and a fake router (no Ray, no ComfyUI). What is recorded is read back
from the log; tests/e2e/test_versions.py runs tasks through the whole service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from comfy_fleet.config import REPO_ROOT
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app.api import create_app
from serve_app.services import Services
from tests.integration.test_api_bad_input import (
    FakeRouterClient, FakeWebhooks, _database, _drop, free_port, settings_for,
)
from tests.unit.test_inputs import encoded

pytestmark = pytest.mark.postgres


class Served:
    def __init__(self, http: httpx.AsyncClient, folder: Path, built: list[Services]) -> None:
        self.http, self.folder, self.built = http, folder, built

    @property
    def services(self) -> Services:
        return self.built[0]

    async def reload(self) -> dict[str, Any]:
        r = await self.http.post("/api/v1/workflows/reload")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def submitted(self, task_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/v1/tasks/{task_id}/events")
        assert r.status_code == 200, r.text
        first = r.json()[0]
        assert first["type"] == "task.submitted"
        return dict(first["data"])


@pytest.fixture
async def served(pg_admin_dsn: str, pg_template: str, tmp_path: Path) -> AsyncIterator[Served]:
    dsn = await _database(pg_admin_dsn, pg_template, "versions")
    folder = tmp_path / "workflows"
    shutil.copytree(REPO_ROOT / "workflows", folder)
    port = free_port()
    settings = settings_for(dsn, port)
    built: list[Services] = []

    async def build() -> Services:
        registry, problems = WorkflowRegistry.load(folder)
        assert problems == []
        built.append(Services(
            settings=settings, log=await PostgresEventLog.connect(dsn, max_size=2),
            store=InMemoryBlobStore(), registry=registry, router=FakeRouterClient(),
            webhooks=FakeWebhooks(), url_policy=UrlPolicy.from_settings(settings),
        ))
        return built[-1]

    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, build), host="127.0.0.1", port=port, lifespan="on",
        log_level="warning", access_log=False,
    ))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Served(http, folder, built)
    finally:
        server.should_exit = True
        await serving
        await _drop(pg_admin_dsn, dsn)


async def submit(s: Served, body: dict[str, Any]) -> httpx.Response:
    return await s.http.post("/api/v1/tasks", json=body)


async def test_a_task_records_its_version_and_params_not_the_graph(served: Served) -> None:
    listed = (await served.http.get("/api/v1/workflows")).json()
    version = {w["name"]: w["version"] for w in listed}["solid"]
    r = await submit(served, {"workflow": "solid", "params": {"width": 8}})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["workflow_version"] == version and task["rerun_of"] is None
    assert task["inputs"] == []
    data = await served.submitted(task["task_id"])
    assert data["prompt"] == {} and data["workflow_version"] == version
    assert data["params"]["width"] == 8 and data["seeds_drawn"] == []
    held = await served.services.log.get_version("solid", version)
    assert held is not None and held.intact()
    assert held.graph_json == (served.folder / "solid.json").read_bytes()


async def test_versions_are_listed_pinned_and_unknown_ones_refused(served: Served) -> None:
    before = (await served.http.get("/api/v1/workflows/solid")).json()["version"]
    r = await served.http.get("/api/v1/workflows/solid/versions")
    assert r.status_code == 200
    assert r.json() == [{"version": before, "created_at": None, "current": True}]
    assert (await submit(served, {"workflow": "solid"})).status_code == 202
    toml = served.folder / "solid.toml"
    toml.write_text(toml.read_text().replace("default = 512", "default = 64", 1))
    assert (await served.reload())["changed"] == ["solid"]
    after = (await served.http.get("/api/v1/workflows/solid")).json()["version"]
    assert after != before
    listed = (await served.http.get("/api/v1/workflows/solid/versions")).json()
    assert [(v["version"], v["current"]) for v in listed] == [(before, False), (after, True)]
    assert listed[0]["created_at"] is not None and listed[1]["created_at"] is None
    # pinned: the old version, with its old default
    r = await submit(served, {"workflow": "solid", "workflow_version": before})
    assert r.status_code == 202, r.text
    assert r.json()["workflow_version"] == before
    assert (await served.submitted(r.json()["task_id"]))["params"]["width"] == 512
    r = await submit(served, {"workflow": "solid", "workflow_version": after})
    assert (await served.submitted(r.json()["task_id"]))["params"]["width"] == 64
    # an old version stays readable, graph and manifest
    one = (await served.http.get(f"/api/v1/workflows/solid/versions/{before}")).json()
    assert one["current"] is False and "default = 512" in one["manifest"]
    assert one["graph"]["1"]["class_type"] == "EmptyImage"
    events_before = await _count(served)
    for version in ("0" * 16, "nope", after.upper()):
        r = await submit(served, {"workflow": "solid", "workflow_version": version})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "workflow_version_unknown"
    r = await submit(served, {"workflow": "invert", "workflow_version": before})
    assert r.status_code == 409  # a version of another workflow
    assert await _count(served) == events_before
    r = await served.http.get(f"/api/v1/workflows/solid/versions/{'0' * 16}")
    assert r.status_code == 404
    assert (await served.http.get("/api/v1/workflows/nothing/versions")).status_code == 404
    # A workflow no longer served: its versions stay readable, none of them runs.
    for suffix in (".json", ".toml"):
        (served.folder / f"solid{suffix}").unlink()
    assert (await served.reload())["removed"] == ["solid"]
    listed = (await served.http.get("/api/v1/workflows/solid/versions")).json()
    assert [(v["version"], v["current"]) for v in listed] == [(before, False), (after, False)]
    one = await served.http.get(f"/api/v1/workflows/solid/versions/{before}")
    assert one.status_code == 200 and "default = 512" in one.json()["manifest"]
    r = await submit(served, {"workflow": "solid", "workflow_version": before})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_workflow"


async def _count(s: Served) -> int:
    tasks = (await s.http.get("/api/v1/tasks?limit=500")).json()["tasks"]
    return len(tasks)


async def test_a_rerun_reuses_the_kept_input_and_draws_the_seed_afresh(served: Served) -> None:
    image = encoded("JPEG", size=(9, 5))
    r = await submit(served, {"workflow": "img2img", "params": {
        "image": base64.b64encode(image).decode(), "text": "a cat"}})
    assert r.status_code == 202, r.text
    original = r.json()
    (kept,) = original["inputs"]
    assert kept["param"] == "image" and kept["sha256"] == hashlib.sha256(image).hexdigest()
    assert kept["content_type"] == "image/jpeg" and kept["size"] == len(image)
    assert kept["s3_key"] == f"tasks/{original['task_id']}/inputs/image" and kept["url"]
    first = await served.submitted(original["task_id"])
    assert first["seeds_drawn"] == ["seed"] and first["params"]["image"] == "<image>"
    store = served.services.store
    assert isinstance(store, InMemoryBlobStore)
    assert store.objects[kept["s3_key"]] == (image, "image/jpeg")

    r = await served.http.post(f"/api/v1/tasks/{original['task_id']}/rerun")
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["rerun_of"] == original["task_id"] and again["task_id"] != original["task_id"]
    assert again["workflow_version"] == original["workflow_version"]
    assert [i["sha256"] for i in again["inputs"]] == [kept["sha256"]]
    assert again["inputs"][0]["s3_key"] == kept["s3_key"]  # reused, not copied
    data = await served.submitted(again["task_id"])
    assert data["rerun_of"] == original["task_id"] and data["seeds_drawn"] == ["seed"]
    assert data["params"]["text"] == "a cat"
    assert data["params"]["seed"] != first["params"]["seed"]  # 1 in 2**53 to collide
    assert data["inputs"][0]["filename"] == f"fleet/{again['task_id']}-image.png"

    r = await served.http.post(f"/api/v1/tasks/{original['task_id']}/rerun",
                               json={"params": {"text": "a dog"}, "same_seed": True,
                                     "priority": 5})
    assert r.status_code == 202, r.text
    kept_seed = await served.submitted(r.json()["task_id"])
    assert kept_seed["params"] == {**first["params"], "text": "a dog"}
    assert kept_seed["seeds_drawn"] == ["seed"] and r.json()["priority"] == 5


async def test_bad_reruns_are_refused_and_record_nothing(served: Served) -> None:
    r = await submit(served, {"workflow": "solid", "params": {"width": 8}})
    tid = r.json()["task_id"]
    before = await _count(served)
    for body, status, code in [
        ({"params": {"width": 0}}, 422, "params_invalid"),
        ({"params": {"nope": 1}}, 422, "params_invalid"),
        ({"same_seed": "x"}, 422, None),
        ({"other": 1}, 422, None),
    ]:
        r = await served.http.post(f"/api/v1/tasks/{tid}/rerun", json=body)
        assert r.status_code == status, r.text
        if code:
            assert r.json()["error"]["code"] == code
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        r = await served.http.post(f"/api/v1/tasks/{unknown}/rerun")
        assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    assert await _count(served) == before
