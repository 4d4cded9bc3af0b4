"""The router's fair share among tenants (actors/router.py with actors/router_waiting.py), no
Ray: an in-memory log and fake endpoints that record each dispatch in the log, as real ones do."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors import router as router_module
from actors.router import Router
from actors.router_waiting import WaitingTasks
from comfy_fleet.config import Settings
from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.policies.fair_share import WaitingTask
from tests.support.polling import eventually
from tests.support.router_fakes import RecordingEndpoint


async def submit(log: InMemoryEventLog, tenant: str, priority: int = 0) -> str:
    task_id = str(uuid.uuid4())
    await log.append(task_id, 0, [events.TaskSubmitted(
        workflow="solid", workflow_version="v1", params={}, prompt={}, priority=priority, tenant=tenant,
    )])
    return task_id


async def finish(log: InMemoryEventLog, task_id: str) -> None:
    state = await log.get(task_id)
    await log.append(task_id, state.seq, [events.TaskSucceeded(prompt_id=f"p-{task_id}")], state)


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "HEARTBEAT_S", 0.02)


@pytest.fixture
async def routers() -> AsyncIterator[list[Router]]:
    made: list[Router] = []
    yield made
    for r in made:
        await r.stop()


def router_for(log: InMemoryEventLog, ep: RecordingEndpoint, made: list[Router], **settings: Any) -> Router:
    r = Router(
        settings=Settings(endpoint_queue_depth=1, **settings), log=log, endpoints={ep.name: ep},
        rng=random.Random(1),
    )
    made.append(r)
    return r


async def run_one_at_a_time(log: InMemoryEventLog, ep: RecordingEndpoint, n: int) -> list[str]:
    """Let the fleet (one slot) run `n` tasks, one after another; their ids in dispatch order."""
    start = len(ep.dispatched)
    for i in range(n):
        await eventually(lambda i=i: len(ep.dispatched) > start + i, what=f"dispatch {i + 1}")
        await finish(log, ep.dispatched[start + i])
    return ep.dispatched[start:start + n]


async def test_a_flooding_tenant_does_not_starve_another(routers: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = RecordingEndpoint(log)
    tenant_of: dict[str, str] = {}
    for _ in range(20):
        tenant_of[await submit(log, "acme")] = "acme"
    for _ in range(5):
        tenant_of[await submit(log, "beta", priority=100)] = "beta"
    r = router_for(log, ep, routers)
    await r.start()
    assert (await r.stats())["tenants"] == {"acme": 20, "beta": 5}
    order = [tenant_of[t] for t in await run_one_at_a_time(log, ep, 12)]
    # Equal weights: while both wait, dispatches alternate (never more than two in a row).
    assert order[:10].count("beta") == 5
    assert all(order[i:i + 3] != [order[i]] * 3 for i in range(8))
    assert order[10:] == ["acme", "acme"]


async def test_weights_share_the_slots_and_priority_orders_only_within_a_tenant(routers: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = RecordingEndpoint(log)
    acme = [await submit(log, "acme", priority=p) for p in (0, 5, 1, 9, 3, 7, 2, 8)]
    beta = [await submit(log, "beta", priority=-5) for _ in range(4)]
    r = router_for(log, ep, routers, tenant_weights=(("acme", 3),))
    await r.start()
    order = await run_one_at_a_time(log, ep, 8)
    tenants = ["acme" if t in acme else "beta" for t in order]
    assert tenants.count("acme") == 6 and tenants.count("beta") == 2  # 3 : 1
    ran_acme = [t for t in order if t in acme]
    assert ran_acme == sorted(ran_acme, key=lambda t: -[0, 5, 1, 9, 3, 7, 2, 8][acme.index(t)])
    assert [t for t in order if t in beta] == beta[:2]  # by age


async def test_a_restarted_router_makes_the_same_next_choices(routers: list[Router]) -> None:
    """The share is rebuilt from the log: after a restart the next dispatches are the ones
    the first router would have made."""
    async def scenario(restart_after: int | None) -> list[str]:
        log = InMemoryEventLog()
        ep = RecordingEndpoint(log)
        names = [await submit(log, t) for t in ["a"] * 12 + ["b"] * 4 + ["c"] * 6]
        label = {tid: f"{log._states[tid].tenant}{i}" for i, tid in enumerate(names)}  # noqa: SLF001
        weights = (("a", 2), ("c", 1.5))
        r = router_for(log, ep, routers, tenant_weights=weights)
        await r.start()
        if restart_after is None:
            done = await run_one_at_a_time(log, ep, 16)
        else:
            done = await run_one_at_a_time(log, ep, restart_after)
            await r.stop()
            r2 = router_for(log, ep, routers, tenant_weights=weights)
            # Whatever the first router held is in the log: the second starts from it alone.
            await r2.start()
            done += await run_one_at_a_time(log, ep, 16 - restart_after)
        return [label[t] for t in done]

    straight = await scenario(None)
    for cut in (3, 7):
        assert await scenario(cut) == straight


async def test_a_cancelled_waiting_task_leaves_its_tenants_count(routers: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = RecordingEndpoint(log)
    first = await submit(log, "acme")
    waiting = [await submit(log, "acme") for _ in range(2)] + [await submit(log, "beta")]
    r = router_for(log, ep, routers)
    await r.start()
    await eventually(lambda: ep.dispatched == [first], what="first dispatch")
    assert (await r.stats())["tenants"] == {"acme": 2, "beta": 1}
    assert await r.cancel(waiting[2]) == "removed"
    assert (await r.stats())["tenants"] == {"acme": 2}


def test_waiting_tasks_remember_what_was_handed_out() -> None:
    now = [0.0]
    w = WaitingTasks(memory_s=10, clock=lambda: now[0])
    task = WaitingTask("t1", "acme")
    assert w.push(task) and not w.push(task)
    assert w.next(lambda _t: True) == task
    assert not w.push(task)  # a late notice of a task handed out: no ghost
    assert w.requeue(task) and "t1" in w  # the endpoint let go of it
    assert w.next(lambda _t: True) == task
    now[0] = 11.0
    w.forget_old()
    assert w.push(task) and w.counts() == {"acme": 1}
    w.rebuild(["acme", "beta"], [("t2", 0, 1.0, "solid", [], "beta")])
    assert w.task_ids() == ["t2"] and w.counts() == {"beta": 1}
