"""Endpoints added and removed at run time, and routing by what each endpoint can run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from comfy_standin.testing import StandInProcess
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

ONLY_HERE_GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "only-here.safetensors"}},
    "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "only"}},
}
ONLY_HERE_TOML = 'description = "Needs a model only one endpoint has"\n'


async def eventually(fn, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {value!r}")
        await asyncio.sleep(0.2)


async def test_added_endpoint_serves_the_workflow_only_it_can_run_then_drains(
    fleet: Fleet, tmp_path: Path
) -> None:
    third = StandInProcess(
        input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp",
        models={"checkpoints": ["only-here.safetensors"]},
    )
    for d in ("in", "out", "tmp"):
        (tmp_path / d).mkdir()
    third.start()
    try:
        wf_dir = fleet.settings.workflows_dir
        (wf_dir / "only_here.json").write_text(json.dumps(ONLY_HERE_GRAPH))
        (wf_dir / "only_here.toml").write_text(ONLY_HERE_TOML)
        reload = (await fleet.http.post("/workflows/reload")).json()
        assert "only_here" in reload["added"]

        # Before the third endpoint exists, nobody can run it: the task waits, queued.
        r = await fleet.http.post("/tasks", json={"workflow": "only_here", "params": {}})
        waiting_id = r.json()["task_id"]
        await asyncio.sleep(1.0)
        assert (await fleet.http.get(f"/tasks/{waiting_id}")).json()["status"] == "queued"

        r = await fleet.http.post("/endpoints", json={"endpoint": third.host_port, "labels": ["special"]})
        assert r.status_code == 201, r.text

        async def connected() -> dict | None:
            eps = {e["endpoint"]: e for e in (await fleet.http.get("/endpoints")).json()}
            e = eps.get(third.host_port)
            return e if e and e["state"] == "connected" and e.get("workflows") else None

        ep = await eventually(connected)
        assert "only_here" in ep["workflows"] and ep["labels"] == ["special"]
        others = [e for e in (await fleet.http.get("/endpoints")).json() if e["endpoint"] != third.host_port]
        assert all("only_here" not in (e.get("workflows") or []) for e in others)

        ids = [waiting_id]
        for _ in range(3):
            ids.append((await fleet.http.post("/tasks", json={"workflow": "only_here", "params": {}})).json()["task_id"])
        finals = [await fleet.wait_final(t) for t in ids]
        assert all(f["status"] == "succeeded" for f in finals), finals
        assert {f["endpoint"] for f in finals} == {third.host_port}

        r = await fleet.http.delete(f"/endpoints/{third.host_port}")
        assert r.status_code == 202 and r.json()["state"] == "draining"

        async def gone() -> bool:
            eps = (await fleet.http.get("/endpoints")).json()
            return third.host_port not in {e["endpoint"] for e in eps}

        await eventually(gone)
        assert (await fleet.http.delete(f"/endpoints/{third.host_port}")).status_code == 404
        # Removed: the workflow only it could run waits again.
        r = await fleet.http.post("/tasks", json={"workflow": "only_here", "params": {}})
        late = r.json()["task_id"]
        await asyncio.sleep(1.0)
        assert (await fleet.http.get(f"/tasks/{late}")).json()["status"] == "queued"
        await fleet.http.post(f"/tasks/{late}/cancel")
    finally:
        third.stop()
        for name in ("only_here.json", "only_here.toml"):
            (fleet.settings.workflows_dir / name).unlink(missing_ok=True)
        await fleet.http.post("/workflows/reload")
