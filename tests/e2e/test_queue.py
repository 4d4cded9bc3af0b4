"""Queue position and ETA (CONTRACT §7.6) through the whole service: with the stand-ins' workers
stalled, GET /tasks/{id} shows the waiting tasks at positions 1..n in dispatch order, the stream
sends an `event: queue` line on connect, a running task is at position 0 and an ended one has no
`queue`."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.support.fleet import Fleet
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: Tasks submitted while the workers are stalled: more than the ComfyUI queues take.
TASKS = 6
#: Seconds SaveImage takes once the workers go on, so a running task can be seen running.
SAVE_S = 1.5


async def _knobs(url: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """Set knobs; returns their values before."""
    async with httpx.AsyncClient() as c:
        before = (await c.get(f"{url}/_standin/knobs")).json()
        r = await c.post(f"{url}/_standin/knobs", json=knobs)
        assert r.status_code == 200, r.text
        return {k: before[k] for k in knobs}


async def _first_queue_line(fleet: Fleet, task_id: str) -> dict[str, Any]:
    """The data of the stream's first `event: queue` frame (the stream is then left)."""
    async with fleet.http.stream("GET", f"/tasks/{task_id}/stream", timeout=30) as resp:
        assert resp.status_code == 200
        block: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if block.get("event") == "queue":
                    assert "id" not in block, block
                    return dict(orjson.loads(block["data"]))
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                block[key] = value
    raise AssertionError("the stream ended without an event: queue line")


@pytest.fixture
async def stalled(fleet: Fleet) -> Any:
    """The stand-ins' workers take no prompt until `stalled(False)`; knobs restored at the end."""
    knobs = {"stall_worker": True, "node_delays": {"SaveImage": SAVE_S}}
    before = [await _knobs(s.url, knobs) for s in fleet.standins]

    async def release() -> None:
        for s in fleet.standins:
            await _knobs(s.url, {"stall_worker": False})

    try:
        yield release
    finally:
        for s, values in zip(fleet.standins, before, strict=True):
            await _knobs(s.url, values)


async def test_waiting_tasks_show_their_place_and_eta_until_they_run_and_end(
    fleet: Fleet, stalled: Any
) -> None:
    ids = []
    for i in range(TASKS):
        r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": 8 + i}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    seen: dict[str, Any] = {}

    async def placed() -> list[dict[str, Any]] | None:
        tasks = [(await fleet.http.get(f"/tasks/{t}")).json() for t in ids]
        seen["tasks"] = tasks
        if any(t.get("queue") is None for t in tasks):
            return None
        # the ComfyUI queues are full (nothing runs), the rest waits in the router
        if not any(t["status"] == "dispatched" for t in tasks) or tasks[-1]["status"] != "queued":
            return None
        return tasks

    tasks = await eventually(placed, timeout=30, interval=0.2, what="every task placed")
    positions = [t["queue"]["position"] for t in tasks]
    # submitted in order, one tenant, one priority: dispatched in that order
    assert positions == list(range(positions[0], positions[0] + TASKS)), seen
    assert positions[0] >= 1
    assert all(t["queue"]["eta_s"] >= 0 for t in tasks), tasks

    # The stream's first queue line says the same place.
    first = await _first_queue_line(fleet, ids[-1])
    assert first["position"] == positions[-1]
    assert first["eta_s"] >= 0

    # A list carries it too.
    page = (await fleet.http.get("/tasks", params={"status": "queued"})).json()["tasks"]
    listed = {t["task_id"]: t for t in page}
    assert listed[ids[-1]]["queue"]["position"] == positions[-1]

    await stalled()

    async def running() -> dict[str, Any] | None:
        task = (await fleet.http.get(f"/tasks/{ids[0]}")).json()
        seen["first"] = task
        return task if task["status"] == "running" else None

    task = await eventually(running, timeout=30, interval=0.05, what="the first task running")
    assert task["queue"]["position"] == 0, task
    assert task["queue"]["eta_s"] >= 0

    for t in ids:
        ended = await fleet.wait_final(t)
        assert ended["status"] == "succeeded", ended
        assert ended.get("queue") is None, ended
    # the stream of an ended task sends its events and no queue line
    async with fleet.http.stream("GET", f"/tasks/{ids[0]}/stream", timeout=30) as resp:
        body = (await resp.aread()).decode()
    assert "task.succeeded" in body and "event: queue" not in body
