"""Router (actors/router.py) without Ray: an in-memory log and fake endpoint handles."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors import router as router_module
from actors.router import Router
from comfy_fleet.log import events
from comfy_fleet.config import Settings
from comfy_fleet.log.event_log import InMemoryEventLog
from tests.support.polling import eventually


class FakeEndpoint:
    """An endpoint handle: records dispatches, answers from a script (default 'accepted')."""

    def __init__(self, name: str, *, connected: bool = True) -> None:
        self.name = name
        self.connected = connected
        self.dispatched: list[str] = []
        self.script: list[str] = []
        self.cancels: list[str] = []

    async def dispatch(self, task_id: str) -> str:
        self.dispatched.append(task_id)
        return self.script.pop(0) if self.script else "accepted"

    async def dispatch_many(self, task_ids: list[str], states: list[Any] | None = None) -> list[str]:
        return [await self.dispatch(t) for t in task_ids]

    async def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "queue_remaining": 0, "inflight": 0}

    async def cancel(self, task_id: str) -> str:
        self.cancels.append(task_id)
        return "interrupting"


async def submit(log: InMemoryEventLog, *, priority: int = 0, workflow: str = "solid") -> str:
    task_id = str(uuid.uuid4())
    await log.append(
        task_id, 0,
        [events.TaskSubmitted(workflow=workflow, workflow_version="v1", params={}, prompt={},
                              priority=priority)],
    )
    return task_id


async def end_in_log(log: InMemoryEventLog, task_id: str, endpoint: str) -> None:
    """What the endpoint does: record the dispatch there, then the task's end."""
    state = await log.get(task_id)
    state = await log.append(
        task_id, state.seq, [events.TaskDispatched(endpoint=endpoint, prompt_id=f"p-{task_id}", attempt=1)], state
    )
    await log.append(task_id, state.seq, [events.TaskSucceeded(prompt_id=f"p-{task_id}")], state)


async def requeue_in_log(log: InMemoryEventLog, task_id: str, endpoint: str) -> None:
    """What the endpoint does when it loses a prompt: record the dispatch there, then the
    requeue."""
    state = await log.get(task_id)
    state = await log.append(
        task_id, state.seq, [events.TaskDispatched(endpoint=endpoint, prompt_id=f"p-{task_id}", attempt=1)], state
    )
    await log.append(
        task_id, state.seq, [events.TaskRequeued(endpoint=endpoint, prompt_id=f"p-{task_id}", reason="lost")], state
    )


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # The heartbeat is what reconnects an endpoint after a RETRY; a second is long in a test.
    monkeypatch.setattr(router_module, "HEARTBEAT_S", 0.02)


@pytest.fixture
async def started() -> AsyncIterator[list[Router]]:
    """Routers the test built; stopped at the end."""
    routers: list[Router] = []
    yield routers
    for r in routers:
        await r.stop()


def make_router(
    log: InMemoryEventLog, endpoints: list[FakeEndpoint], routers: list[Router], depth: int = 2
) -> Router:
    r = Router(
        settings=Settings(endpoint_queue_depth=depth),
        log=log,
        endpoints={e.name: e for e in endpoints},
        rng=random.Random(7),
    )
    routers.append(r)
    return r


async def enqueue(r: Router, log: InMemoryEventLog, task_id: str) -> None:
    """The router holds the recorded task: it hears of it from the log (once started), or
    finds it in the log when it starts."""
    await r.start()
    assert task_id in r.waiting or any(task_id in a for a in r.assigned.values())


async def queue_tasks(r: Router, log: InMemoryEventLog, n: int) -> list[str]:
    """n tasks recorded in the log and handed to the router, oldest first."""
    tasks = [await submit(log) for _ in range(n)]
    for t in tasks:
        await enqueue(r, log, t)
    return tasks


def all_dispatched(endpoints: list[FakeEndpoint]) -> list[str]:
    return [t for e in endpoints for t in e.dispatched]


async def test_rebuilds_only_queued_tasks_from_the_log(started: list[Router]) -> None:
    log = InMemoryEventLog()
    queued = [await submit(log) for _ in range(3)]
    dispatched = await submit(log)
    await log.append(dispatched, 1, [events.TaskDispatched(endpoint="x:1", prompt_id="p", attempt=1)])
    ended = await submit(log)
    await log.append(ended, 1, [events.TaskCancelled(where="router")])
    requeued = await submit(log)
    await log.append(requeued, 1, [
        events.TaskDispatched(endpoint="x:1", prompt_id="p1", attempt=1),
        events.TaskRequeued(endpoint="x:1", prompt_id="p1", reason="lost_by_comfyui"),
    ])

    ep = FakeEndpoint("a:1", connected=False)  # nothing dispatches: we see the rebuilt queue
    r = make_router(log, [ep], started)
    await r.start()
    assert sorted(r.waiting.task_ids()) == sorted([*queued, requeued])
    assert (await r.stats())["waiting"] == 4

    ep.connected = True
    await eventually(lambda: len(ep.dispatched) == 2, what="two dispatches")
    # Oldest first among equal priorities.
    assert ep.dispatched == queued[:2]


async def test_dispatches_to_the_least_loaded_and_never_above_depth(started: list[Router]) -> None:
    log = InMemoryEventLog()
    eps = [FakeEndpoint("a:1"), FakeEndpoint("b:1")]
    r = make_router(log, eps, started, depth=2)
    await r.start()
    tasks = await queue_tasks(r, log, 7)

    await eventually(lambda: len(all_dispatched(eps)) == 4, what="4 dispatches")
    await asyncio.sleep(0.1)  # a few more heartbeats: nothing more may go out
    assert [len(e.dispatched) for e in eps] == [2, 2]
    assert len(r.waiting) == 3
    assert sorted(all_dispatched(eps)) == sorted(tasks[:4])  # the oldest went first

    # Finishing one on b frees exactly one slot there.
    done = eps[1].dispatched[0]
    await end_in_log(log, done, "b:1")
    await eventually(lambda: len(eps[1].dispatched) == 3, what="a third dispatch to b")
    assert len(eps[0].dispatched) == 2
    stats = await r.stats()
    assert stats["endpoints"]["a:1"]["inflight"] == 2
    assert stats["endpoints"]["b:1"]["inflight"] == 2
    assert stats["waiting"] == 2

    # A repeated notice of that end frees nothing more.
    r._on_ended(done, "b:1", None)  # noqa: SLF001
    await asyncio.sleep(0.1)
    assert len(all_dispatched(eps)) == 5

    # Every finished task lets the next go out until all ran, each exactly once.
    for _ in range(10):
        for e in eps:
            for t in list(r.assigned[e.name]):
                await end_in_log(log, t, e.name)
        await asyncio.sleep(0.05)
    assert sorted(all_dispatched(eps)) == sorted(tasks)


async def test_ties_spread_over_both_endpoints(started: list[Router]) -> None:
    log = InMemoryEventLog()
    eps = [FakeEndpoint("a:1"), FakeEndpoint("b:1")]
    r = make_router(log, eps, started, depth=1)
    await r.start()
    for _ in range(20):
        t = await submit(log)
        await enqueue(r, log, t)
        holder = await eventually(
            lambda t=t: next((e for e in eps if t in e.dispatched), None), what="dispatch"
        )
        await end_in_log(log, t, holder.name)
    assert len(eps[0].dispatched) + len(eps[1].dispatched) == 20
    assert eps[0].dispatched and eps[1].dispatched


async def test_nothing_is_dispatched_while_no_endpoint_is_connected(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1", connected=False)
    r = make_router(log, [ep], started)
    await r.start()
    task = await submit(log)
    await enqueue(r, log, task)
    await asyncio.sleep(0.1)
    assert ep.dispatched == [] and task in r.waiting
    ep.connected = True
    await eventually(lambda: ep.dispatched == [task], what="dispatch after connect")


async def test_retry_puts_the_task_back(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    ep.script = ["retry"]
    r = make_router(log, [ep], started)
    await r.start()
    task = await submit(log)
    await enqueue(r, log, task)
    # Refused for now, then given again once the heartbeat says the endpoint is back.
    await eventually(lambda: ep.dispatched == [task, task], what="a second dispatch")
    await asyncio.sleep(0.1)
    assert ep.dispatched == [task, task]
    assert task not in r.waiting and r.assigned["a:1"] == {task}


async def test_retry_goes_to_another_endpoint(started: list[Router]) -> None:
    log = InMemoryEventLog()
    a, b = FakeEndpoint("a:1"), FakeEndpoint("b:1")
    a.script = ["retry"] * 1000
    b.script = ["retry"] * 1000
    r = make_router(log, [a, b], started)
    await r.start()
    task = await submit(log)
    await enqueue(r, log, task)
    await eventually(lambda: a.dispatched and b.dispatched, what="both endpoints tried")
    b.script.clear()
    a.script.clear()
    await eventually(lambda: task in r.assigned["a:1"] | r.assigned["b:1"], what="accepted")
    assert task not in r.waiting


async def test_refused_drops_the_task_and_frees_the_slot(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    ep.script = ["refused"]
    r = make_router(log, [ep], started, depth=1)
    await r.start()
    first, second = await submit(log), await submit(log)
    await enqueue(r, log, first)
    await enqueue(r, log, second)
    await eventually(lambda: ep.dispatched == [first, second], what="second dispatched")
    await asyncio.sleep(0.1)
    assert ep.dispatched == [first, second]
    assert first not in r.waiting and r.assigned["a:1"] == {second}


async def test_a_raising_handle_counts_as_retry(started: list[Router]) -> None:
    class Flaky(FakeEndpoint):
        async def dispatch(self, task_id: str) -> str:
            self.dispatched.append(task_id)
            if len(self.dispatched) == 1:
                raise ConnectionError("actor died")
            return "accepted"

    log = InMemoryEventLog()
    ep = Flaky("a:1")
    r = make_router(log, [ep], started)
    await r.start()
    task = await submit(log)
    await enqueue(r, log, task)
    await eventually(lambda: ep.dispatched == [task, task], what="redispatch after a crash")
    assert r.assigned["a:1"] == {task}


async def test_cancel_of_a_waiting_task_removes_it(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    r = make_router(log, [ep], started, depth=1)
    await r.start()
    running, waiting = await submit(log), await submit(log)
    await enqueue(r, log, running)
    await eventually(lambda: ep.dispatched == [running], what="first dispatch")
    await enqueue(r, log, waiting)
    assert await r.cancel(waiting) == "removed"
    assert await r.cancel(waiting) == "unknown"
    assert await r.cancel(str(uuid.uuid4())) == "unknown"
    # A dispatched task is the endpoint's to cancel.
    assert await r.cancel(running) == "interrupting"
    assert ep.cancels == [running]
    await end_in_log(log, running, "a:1")
    await asyncio.sleep(0.1)
    assert ep.dispatched == [running]


async def test_priorities_are_honoured_while_waiting(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    r = make_router(log, [ep], started, depth=1)
    await r.start()
    blocker = await submit(log)
    await enqueue(r, log, blocker)
    await eventually(lambda: ep.dispatched == [blocker], what="blocker dispatched")
    low = await submit(log, priority=0)
    high = await submit(log, priority=10)
    mid = await submit(log, priority=5)
    low2 = await submit(log, priority=0)
    for t in (low, high, mid, low2):
        await enqueue(r, log, t)
    for expected_len in (2, 3, 4, 5):
        await end_in_log(log, ep.dispatched[-1], "a:1")
        await eventually(lambda n=expected_len: len(ep.dispatched) == n, what=f"dispatch {expected_len}")
    assert ep.dispatched == [blocker, high, mid, low, low2]


async def test_a_requeue_recorded_in_the_log_frees_the_slot_and_the_task_waits_again(
    started: list[Router],
) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    r = make_router(log, [ep], started, depth=1)
    await r.start()
    first, second = await queue_tasks(r, log, 2)
    await eventually(lambda: ep.dispatched == [first], what="first dispatch")

    # The endpoint loses the prompt and records the requeue: the log's notice alone frees its
    # slot and queues the task again, where it is the oldest, so it goes out first.
    await requeue_in_log(log, first, "a:1")
    await eventually(lambda: ep.dispatched == [first, first], what="the notice frees the slot")
    assert second in r.waiting and r.assigned["a:1"] == {first}
    await end_in_log(log, first, "a:1")
    await eventually(lambda: ep.dispatched == [first, first, second], what="the second task")


class NoQueuedNotices(InMemoryEventLog):
    """Loses every notice of a waiting task, as a listener does while it reconnects."""

    async def listen_queued(self, callback: Any) -> None:
        return None


async def test_a_requeue_whose_notice_was_lost_is_found_by_the_scan(
    started: list[Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "SCAN_S", 0.02)
    monkeypatch.setattr(router_module, "TAKEN_MEMORY_S", 0.05)
    log = NoQueuedNotices()
    ep = FakeEndpoint("a:1")
    task = await submit(log)
    r = make_router(log, [ep], started, depth=1)
    await r.start()  # finds the task in the log
    await eventually(lambda: ep.dispatched == [task], what="dispatch")
    await requeue_in_log(log, task, "a:1")
    await eventually(lambda: ep.dispatched == [task, task], what="the scan frees and requeues it")


async def test_an_end_recorded_in_the_log_frees_the_slot_without_a_call(started: list[Router]) -> None:
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    r = make_router(log, [ep], started, depth=1)
    await r.start()
    first, second = await queue_tasks(r, log, 2)
    await eventually(lambda: ep.dispatched == [first], what="first dispatch")
    await asyncio.sleep(0.05)
    assert ep.dispatched == [first]  # depth 1: the second waits

    await end_in_log(log, first, "a:1")
    await eventually(lambda: ep.dispatched == [first, second], what="the notice frees the slot")
    assert r.assigned["a:1"] == {second}


class DeafLog(InMemoryEventLog):
    """Loses every notice of an end, as a listener does while it reconnects; `relisten()` is
    what happens when its connection is back."""

    async def listen_ended(self, callback: Any, on_listening: Any = None) -> None:
        self.on_listening = on_listening
        if on_listening is not None:
            on_listening()

    def relisten(self) -> None:
        self.on_listening()


async def test_ends_missed_while_not_listening_are_caught_up_from_the_log(started: list[Router]) -> None:
    log = DeafLog()
    eps = [FakeEndpoint("a:1"), FakeEndpoint("b:1")]
    r = make_router(log, eps, started, depth=1)
    await r.start()
    tasks = await queue_tasks(r, log, 3)
    await eventually(lambda: len(all_dispatched(eps)) == 2, what="one task on each endpoint")
    on_a = eps[0].dispatched[0]
    await end_in_log(log, on_a, "a:1")
    await asyncio.sleep(0.1)
    assert len(all_dispatched(eps)) == 2  # the notice was lost: a:1 still looks busy

    log.relisten()
    await eventually(lambda: eps[0].dispatched == [on_a, tasks[2]], what="caught up: a:1 free again")
    assert r.assigned["a:1"] == {tasks[2]} and len(r.assigned["b:1"]) == 1  # b's task still runs
