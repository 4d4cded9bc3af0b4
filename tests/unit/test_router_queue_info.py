"""Router.queue_info (CONTRACT §7.6) without Ray: positions in dispatch order, then the waiting
tasks; a running task is 0; an ended one is not held (left out). Also the stream's phases."""

from __future__ import annotations

from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from serve_app import queue_feed
from tests.support.polling import eventually
from tests.unit.test_router import (  # noqa: F401  (fixtures)
    FakeEndpoint,
    all_dispatched,
    end_in_log,
    fast_heartbeat,
    make_router,
    queue_tasks,
    started,
)


async def test_queue_info_places_dispatched_then_waiting_tasks(started) -> None:  # noqa: F811
    log = InMemoryEventLog()
    eps = [FakeEndpoint("a:1"), FakeEndpoint("b:1")]
    r = make_router(log, eps, started, depth=1)
    await r.start()
    tasks = await queue_tasks(r, log, 5)
    await eventually(lambda: len(all_dispatched(eps)) == 2, what="2 dispatches")

    places = await r.queue_info(tasks)
    assert [places[t]["position"] for t in tasks] == [1, 2, 3, 4, 5]
    assert all(p["eta_s"] >= 0 for p in places.values())

    # The first runs: position 0, and the others move up.
    places = await r.queue_info(tasks, [tasks[0]])
    assert places[tasks[0]]["position"] == 0
    assert [places[t]["position"] for t in tasks[1:]] == [1, 2, 3, 4]

    # It ends: not held any more, left out; its run time is learnt.
    await end_in_log(log, tasks[0], eps[0].name if tasks[0] in eps[0].dispatched else eps[1].name)
    await eventually(lambda: tasks[0] not in r.book.flights, what="the end heard")
    assert tasks[0] not in await r.queue_info(tasks)


def test_the_stream_s_phase_follows_the_task_s_events() -> None:
    types = [events.TaskSubmitted.TYPE]
    assert queue_feed.phase_after(types) == "queued"
    types.append(events.TaskDispatched.TYPE)
    assert queue_feed.phase_after(types) == "dispatched"
    types.append("task.started")
    assert queue_feed.phase_after(types) == "running"
    assert queue_feed.phase_after(["task.requeued"], "running") == "queued"
    assert queue_feed.phase_after(["task.progressed", "task.succeeded"], "running") == queue_feed.ENDED


def test_a_queue_line_has_no_id_and_only_position_and_eta() -> None:
    line = queue_feed.queue_line({"position": 2, "eta_s": 3, "other": 1})
    assert line == b'event: queue\ndata: {"position":2,"eta_s":3.0}\n\n'
