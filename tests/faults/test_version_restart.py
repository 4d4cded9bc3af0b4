"""A task runs the workflow version it was accepted with even when its files change and the
whole service (Serve and every actor) is killed and started again before it is dispatched: the
endpoint renders its prompt from the version stored in the log, not from the files."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import uuid
from pathlib import Path

import pytest

from comfy_fleet.config import REPO_ROOT
from tests.faults.conftest import FaultFleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


def write_versioned(folder: Path, prefix: str) -> None:
    graph = (REPO_ROOT / "workflows" / "solid.json").read_text()
    (folder / "versioned.json").write_text(
        graph.replace('"filename_prefix": "solid"', f'"filename_prefix": "{prefix}"'))
    shutil.copy(REPO_ROOT / "workflows" / "solid.toml", folder / "versioned.toml")


async def test_an_edit_and_a_restart_before_dispatch_leave_the_task_its_version(
    fleet: FaultFleet,
) -> None:
    folder = fleet.data_dir / f"workflows-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO_ROOT / "workflows", folder)
    write_versioned(folder, "old")
    settings = dataclasses.replace(fleet.settings, workflows_dir=folder)
    await fleet.restart_service(settings)
    await fleet.wait_ready()
    for i in range(len(fleet.standins)):
        await fleet.knobs(i, stall_worker=True)
    try:
        fillers = await fleet.submit(
            settings.endpoint_queue_depth * len(fleet.standins), callback=False)
        for _ in range(400):
            states = {(await fleet.http.get(f"/tasks/{t}")).json()["status"] for t in fillers}
            if states == {"dispatched"}:
                break
            await asyncio.sleep(0.05)
        assert states == {"dispatched"}
        r = await fleet.http.post("/tasks", json={"workflow": "versioned"})
        assert r.status_code == 202, r.text
        task, old = r.json()["task_id"], r.json()["workflow_version"]
        await asyncio.sleep(0.3)
        # not dispatched yet (so not rendered) when its files change
        assert (await fleet.http.get(f"/tasks/{task}")).json()["status"] == "queued"
        write_versioned(folder, "new")
        await fleet.restart_service(settings)
        await fleet.wait_ready()
        current = (await fleet.http.get("/workflows/versioned")).json()["version"]
        assert current != old
    finally:
        for i in range(len(fleet.standins)):
            await fleet.knobs(i, stall_worker=False)
    for _ in range(600):
        final = (await fleet.http.get(f"/tasks/{task}")).json()
        if final["status"] in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.1)
    assert final["status"] == "succeeded", final
    assert final["workflow_version"] == old
    (out,) = final["outputs"]
    assert out["filename"].startswith("old_"), out
