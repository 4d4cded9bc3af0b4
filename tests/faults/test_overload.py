"""A burst over the admission limit: POST /tasks answers 429 with Retry-After past
MAX_WAITING_TASKS; admitted tasks are unaffected; the waiting ones are dispatched highest
priority first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.ingress import WAITING_REFRESH_S
from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

LIMIT = 8


async def test_burst_over_admission_limit_is_refused_and_priorities_hold(fleet: FaultFleet) -> None:
    await fleet.restart_service(fleet.base_settings.replace(max_waiting_tasks=LIMIT))
    await fleet.wait_ready()
    for i in range(3):
        await fleet.knobs(i, stall_worker=True)
    depth = fleet.settings.endpoint_queue_depth * len(fleet.endpoints)
    fill = await fleet.submit(depth)

    async def all_dispatched() -> bool:
        st = [(await fleet.http.get(f"/tasks/{t}")).json()["status"] for t in fill]
        return all(s == "dispatched" for s in st)

    await eventually(all_dispatched, timeout=30, interval=0.2, what="every ComfyUI queue full")
    # The ingress counts each submit as waiting until its next look at the router (every
    # WAITING_REFRESH_S): let it see that the fill is dispatched, not waiting.
    await asyncio.sleep(3 * WAITING_REFRESH_S)
    low = await fleet.submit(LIMIT // 2, priority=0)
    high = await fleet.submit(LIMIT // 2, priority=5)

    refused: list[Any] = []
    extra: list[str] = []
    for i in range(6):
        r = await fleet.http.post(
            "/tasks", json={"workflow": "solid", "params": {"width": 9, "height": 9 + i},
                            "callback_url": fleet.receiver.url},
        )
        if r.status_code == 202:
            extra.append(r.json()["task_id"])  # acknowledged: it must end like the others
            continue
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"], r.text
        assert int(r.headers["retry-after"]) > 0
        refused.append(r)
    assert refused, f"no 429 past {LIMIT} waiting tasks"
    assert not extra, f"{len(extra)} tasks admitted past the limit of {LIMIT} waiting"

    # One ComfyUI drains; each freed slot takes the best waiting task.
    await fleet.knobs(1, stall_worker=False)

    async def waiting_drained() -> bool:
        st = [(await fleet.http.get(f"/tasks/{t}")).json()["status"] for t in high]
        return all(s != "queued" for s in st)

    await eventually(
        waiting_drained, timeout=60, interval=0.2, what="the high-priority tasks dispatched"
    )
    for i in range(3):
        await fleet.knobs(i, stall_worker=False)

    ids = fill + low + high + extra
    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=90)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    # Order of first dispatch among the tasks that waited in the router.
    def first_dispatch(t: str) -> tuple[str, int]:
        e = checked[t].first("task.dispatched")
        assert e is not None
        return e["at"], int(high.count(t))

    order = sorted(low + high, key=first_dispatch)
    inversions = sum(
        1 for i, a in enumerate(order) for b in order[i + 1:] if a in low and b in high
    )
    # A refill takes up to ENDPOINT_QUEUE_DEPTH tasks in one batch whose records may interleave.
    shown = ["H" if t in high else "L" for t in order]
    assert inversions <= fleet.settings.endpoint_queue_depth - 1, shown
