"""A ComfyUI restarts empty, hangs, or its websocket turns into a zombie: lost prompts go to
another endpoint (attempt + 1), nothing is run twice to the client, and every task ends."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def _inflight_on(fleet: FaultFleet, endpoint: str) -> int:
    return int((await fleet.endpoint_states()).get(endpoint, {}).get("inflight", 0))


async def test_standin_down_10s_and_back_empty_redispatches_lost_prompts(fleet: FaultFleet) -> None:
    victim = fleet.endpoints[2]
    # Slow enough that the victim holds prompts when it dies.
    for i in range(3):
        await fleet.knobs(i, node_delay=0.3)
    ids = await fleet.submit(24)
    await eventually(lambda: _inflight_on(fleet, victim), timeout=20, what="prompts on the victim")
    await asyncio.to_thread(fleet.standin(victim).restart, 10.0)
    ids += await fleet.submit(6)

    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=120)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    moved = [c for c in checked.values() if "task.requeued" in c.types()]
    assert moved, "no prompt was lost with the stand-in: the fault did not hit"
    for c in moved:
        assert c.task["attempt"] >= 2, c.task


async def test_hanging_standin_loses_its_prompts_to_the_others(fleet: FaultFleet) -> None:
    victim_index = 1
    victim = fleet.endpoints[victim_index]
    for i in range(3):
        await fleet.knobs(i, node_delay=0.3)
    ids = await fleet.submit(20)
    await eventually(lambda: _inflight_on(fleet, victim), timeout=20, what="prompts on the victim")
    await fleet.knobs(victim_index, hang=True)
    try:
        ids += await fleet.submit(10)

        async def victim_disconnected() -> bool:
            return (await fleet.endpoint_states()).get(victim, {}).get("state") == "disconnected"

        # Issue 5: a hanging ComfyUI is marked disconnected and takes no new tasks.
        await eventually(
            victim_disconnected, timeout=45, interval=0.2, what="the hanging endpoint disconnected"
        )
        checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=60)
    finally:
        await fleet.knobs(victim_index, hang=False)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    moved = [c for c in checked.values() if "task.requeued" in c.types()]
    assert moved, "no prompt was taken from the hanging stand-in"
    for c in moved:
        assert c.task["endpoint"] != victim and c.task["attempt"] >= 2, c.task


async def test_zombie_websocket_is_detected_and_its_tasks_complete(fleet: FaultFleet) -> None:
    victim = fleet.endpoints[0]  # reached through the proxy that can silence its websocket
    proxy = fleet.mute_proxy
    muted = await fleet.bg.arun(_mute(proxy))
    assert muted >= 1, "no websocket to silence"
    ids = await fleet.submit(24)

    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=90)
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }
    assert proxy.swallowed > 0, "the zombie socket never carried frames: the fault did not hit"
    assert any(c.task["endpoint"] == victim for c in checked.values()), "no task ran on the victim"
    # The endpoint noticed (through /queue and /history) and a fresh socket replaced the zombie.
    assert (await fleet.endpoint_states())[victim]["zombies"] >= 1
    await eventually(lambda: proxy.websocket_count() >= 1, timeout=30, what="a new websocket")


async def _mute(proxy: object) -> int:
    return proxy.mute()  # type: ignore[attr-defined, no-any-return]
