"""The router and the webhook dispatcher die: Ray restarts them and they start themselves.

Their work reaches them as the log's notices, not as calls, so nothing else would wake a
restarted one: it must build itself (actors/remote.py: `build_soon`), rebuild from the log and
listen again. No call is made to either actor here after the kill until every task is checked;
then the endpoints' dispatch streams, broken with the router, are open to the new one."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.remote import NAMESPACE, ROUTER_NAME, WEBHOOKS_NAME
from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def test_restarted_router_and_webhook_actors_start_themselves(fleet: FaultFleet) -> None:
    before = await fleet.submit(6)
    await check_tasks(fleet.http, before, receiver=fleet.receiver, timeout=60)

    for name in (ROUTER_NAME, WEBHOOKS_NAME):
        handle = ray.get_actor(name, namespace=NAMESPACE)
        await asyncio.to_thread(ray.kill, handle, no_restart=False)
    # Submitted while both are down or restarting: the log has them; the restarted router
    # finds them there, and the restarted dispatcher hears of their ends.
    after = await fleet.submit(12)
    checked = await check_tasks(fleet.http, after, receiver=fleet.receiver, timeout=90)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    await fleet.wait_dispatch_streams()
