"""An endpoint actor dies: Ray restarts it, it rebuilds its in-flight prompts from the log and
reconciles them, and every task completes."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.remote import NAMESPACE, endpoint_actor_name
from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def test_killed_endpoint_actor_is_restarted_and_its_tasks_complete(fleet: FaultFleet) -> None:
    victim = fleet.endpoints[1]
    ids = await fleet.submit(24)

    async def victim_busy() -> bool:
        return (await fleet.endpoint_states()).get(victim, {}).get("inflight", 0) > 0

    await eventually(victim_busy, timeout=20, interval=0.02, what="prompts in flight on the victim")
    handle = ray.get_actor(endpoint_actor_name(victim), namespace=NAMESPACE)
    await asyncio.to_thread(ray.kill, handle, no_restart=False)
    ids += await fleet.submit(6)

    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=90)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    # The victim was restarted and works again, with its dispatch stream open again (what the
    # dying one took from its stream and never recorded was handed out again: all succeeded).
    await fleet.wait_ready()
    more = await fleet.submit(6)
    await check_tasks(fleet.http, more, receiver=fleet.receiver, timeout=60)
    await fleet.wait_dispatch_streams()
