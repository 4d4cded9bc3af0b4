"""DispatchStreams (actors/router_streams.py): the router's bookkeeping of the endpoints' dispatch
streams and of what it put on them, with a clock of the test's own. No I/O."""

from __future__ import annotations

from actors.router_streams import DispatchStreams
from comfy_fleet.policies.fair_share import WaitingTask


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def task(task_id: str) -> WaitingTask:
    return WaitingTask(task_id=task_id, tenant="default", priority=0, created_at=1.0,
                       workflow="solid", labels=())


def test_a_new_stream_takes_over_what_the_old_one_had_not_carried_and_ends_it() -> None:
    sends = DispatchStreams()
    old = sends.open("a")
    sends.put("a", [task("t1")], [("t1", None)])
    new = sends.open("a")
    assert new.get_nowait() == [("t1", None)]
    assert old.get_nowait() is None  # the old stream's generator returns
    sends.closed("a", old)  # the old generator's end does not close the new stream
    assert sends.uses("a") and sends.feeds["a"] is new
    sends.closed("a", new)
    assert not sends.uses("a")


def test_answers_settle_only_what_was_put_on_that_endpoints_stream() -> None:
    sends = DispatchStreams()
    sends.open("a")
    sends.open("b")
    sends.put("a", [task("t1"), task("t2")], [("t1", {"seq": 1}), ("t2", None)])
    sends.put("b", [task("t3")], [("t3", None)])
    items, results = sends.answered("a", ["t2", "t3", "t9"], ["retry", "refused", "retry"])
    assert [i.task_id for i in items] == ["t2"] and results == ["retry"]
    assert set(sends.sent) == {"t1", "t3"}
    sends.forget("t1")
    assert set(sends.sent) == {"t3"}


def test_past_the_grace_a_task_still_queued_is_lost_and_its_stream_is_closed() -> None:
    clock = Clock()
    sends = DispatchStreams(grace_s=10.0, clock=clock)
    feed = sends.open("a")
    sends.put("a", [task("lost"), task("taken")], [("lost", None), ("taken", None)])
    clock.now += 5.0
    sends.put("a", [task("young")], [("young", None)])
    assert sends.unheard({"lost", "young"}) == []  # nothing is past the grace yet
    clock.now += 6.0
    lost = sends.unheard({"lost", "young"})
    assert [(e, t.task_id) for e, t in lost] == [("a", "lost")]
    assert set(sends.sent) == {"young"}  # "taken" left the log's queue: it was taken
    assert not sends.uses("a")
    carried = [feed.get_nowait() for _ in range(feed.qsize())]
    assert carried[-1] is None  # the stream ends after what it already held


def test_what_reached_its_endpoint_is_forgotten_without_closing_the_stream() -> None:
    clock = Clock()
    sends = DispatchStreams(grace_s=1.0, clock=clock)
    sends.open("a")
    sends.put("a", [task("t1")], [("t1", None)])
    clock.now += 2.0
    assert sends.unheard(set()) == []
    assert sends.sent == {} and sends.uses("a")


def test_closing_ends_the_stream_of_an_endpoint_that_left() -> None:
    sends = DispatchStreams()
    feed = sends.open("a")
    sends.close("a")
    sends.close("b")  # none open: nothing to do
    assert feed.get_nowait() is None and not sends.uses("a")
