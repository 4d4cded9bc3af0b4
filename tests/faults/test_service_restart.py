"""The whole service is killed mid-burst (Serve and every actor) and started again on the same
database, S3 and ComfyUIs: state comes back from the log and every acknowledged task ends."""

from __future__ import annotations

import pytest

from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def test_service_killed_mid_burst_and_restarted_loses_nothing(fleet: FaultFleet) -> None:
    ids = await fleet.submit(30)

    async def some_done_some_not() -> bool:
        done = 0
        for tid in ids:
            if (await fleet.http.get(f"/tasks/{tid}")).json()["status"] == "succeeded":
                done += 1
                if done >= 3:
                    return True
        return False

    await eventually(some_done_some_not, timeout=30, interval=0.05, what="the burst under way")
    await fleet.restart_service()
    await fleet.wait_ready()
    ids += await fleet.submit(6)

    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=120)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
