"""The running service keeps the fold snapshot fresh (FOLD_SNAPSHOT_S, a Ray task beside the
router): after a task ends, the snapshot soon covers its every event, and `make rebuild` would
fold nothing older. Real Ray, PostgreSQL and HTTP."""

from __future__ import annotations

import asyncio

import asyncpg

from comfy_fleet.log import fold_snapshot
from tests.support.fleet import Fleet


async def test_the_service_refreshes_the_fold_snapshot_past_a_finished_task(fleet: Fleet) -> None:
    r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8}})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    task = await fleet.wait_final(task_id)
    assert task["status"] == "succeeded"
    dsn = fleet.settings.database_url
    assert dsn is not None
    conn = await asyncpg.connect(dsn)
    try:
        last = await conn.fetchval("SELECT max(position) FROM task_events WHERE task_id = $1", task_id)
        assert last is not None
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            snap = await fold_snapshot.read(conn)
            if snap is not None and snap.horizon >= last:
                break
            assert asyncio.get_running_loop().time() < deadline, f"snapshot {snap} never reached {last}"
            await asyncio.sleep(0.5)
        assert snap.fold_version == fold_snapshot.fold_version()
        rows = await conn.fetchval(
            "SELECT count(*) FROM fold_snapshot_rows WHERE task_id = $1", task_id
        )
        assert rows == 1
    finally:
        await conn.close()
