"""Queue position and ETA (comfy_fleet.policies.queue_eta): dispatch order, run times learnt
from ends, ETAs per endpoint and for the fleet."""

from __future__ import annotations

from comfy_fleet.policies import queue_eta
from comfy_fleet.policies.fair_share import FairShare, WaitingTask
from comfy_fleet.policies.queue_eta import QueueBook, RunTimes, Waiting


def _none(_task_id: str) -> Waiting | None:
    return None


def test_run_times_are_a_moving_mean_per_workflow_with_fallbacks() -> None:
    runs = RunTimes(window=3, default_s=7.0)
    assert runs.typical("a") == 7.0
    for s in (1.0, 2.0, 3.0, 10.0):
        runs.observe("a", s)
    assert runs.typical("a") == 5.0  # the window keeps 2, 3, 10
    # a workflow never seen: the mean over all of them
    runs.observe("b", 1.0)
    assert runs.typical("c") == 4.0


def test_a_run_time_counts_from_the_previous_end_on_its_endpoint() -> None:
    book = QueueBook(RunTimes(default_s=100.0))
    book.dispatched("t1", "e1", "w", now=0.0)
    book.dispatched("t2", "e1", "w", now=0.0)
    book.ended("t1", now=4.0)
    book.ended("t2", now=10.0)  # it could only start at 4.0
    assert book.runs.typical("w") == 5.0
    assert book.flights == {}


def test_a_dropped_task_teaches_nothing() -> None:
    book = QueueBook(RunTimes(default_s=3.0))
    book.dispatched("t1", "e1", "w", now=0.0)
    book.dropped("t1")
    book.ended("t1", now=50.0)
    assert book.runs.typical("w") == 3.0


def test_dispatched_tasks_take_positions_in_dispatch_order_and_wait_for_their_endpoint() -> None:
    book = QueueBook(RunTimes(default_s=10.0))
    for i, ep in enumerate(["e1", "e2", "e1", "e2"], start=1):
        book.dispatched(f"t{i}", ep, "w", now=0.0)
    got = book.estimate(["t1", "t2", "t3", "t4"], _none, parallelism=2, now=4.0)
    assert [got[f"t{i}"]["position"] for i in range(1, 5)] == [1, 2, 3, 4]
    # t3 waits for t1 (started at 0, 6 s left); t1 waits for nothing
    assert got["t1"]["eta_s"] == 0.0
    assert got["t3"]["eta_s"] == 6.0


def test_a_running_task_is_position_0_with_its_time_left_and_is_not_ahead_of_others() -> None:
    book = QueueBook(RunTimes(default_s=10.0))
    book.dispatched("t1", "e1", "w", now=0.0)
    book.dispatched("t2", "e1", "w", now=0.0)
    got = book.estimate(["t1", "t2"], _none, running={"t1"}, parallelism=1, now=3.0)
    assert got["t1"] == {"position": 0, "eta_s": 7.0}
    assert got["t2"] == {"position": 1, "eta_s": 7.0}


def test_waiting_tasks_come_after_the_dispatched_ones_in_the_fair_share_s_order() -> None:
    book = QueueBook(RunTimes(default_s=10.0))
    book.dispatched("d1", "e1", "w", now=0.0)
    book.dispatched("d2", "e2", "w", now=0.0)
    share = FairShare()
    for i, tenant in enumerate(["a", "a", "b"]):
        share.push(WaitingTask(task_id=f"q{i}", tenant=tenant, created_at=float(i), workflow="w"))

    def waiting(task_id: str) -> Waiting | None:
        pos = share.position(task_id)
        return None if pos is None else Waiting(pos, share.get(task_id).workflow)  # type: ignore[union-attr]

    got = book.estimate(["q0", "q1", "q2", "gone"], waiting, parallelism=2, now=0.0)
    assert "gone" not in got
    # the share alternates tenants: q0 (a), q2 (b), q1 (a)
    assert [got[t]["position"] for t in ("q0", "q2", "q1")] == [3, 4, 5]
    # 20 s in flight shared by 2 endpoints, then 10 s per waiting task ahead
    assert got["q0"]["eta_s"] == 10.0
    assert got["q2"]["eta_s"] == 15.0
    assert got["q1"]["eta_s"] == 20.0


def test_no_endpoint_counts_as_one_and_etas_never_go_negative() -> None:
    book = QueueBook(RunTimes(default_s=2.0))
    book.dispatched("t1", "e1", "w", now=0.0)
    got = book.estimate(
        ["t1", "q"], lambda t: Waiting(1, "w") if t == "q" else None,
        running={"t1"}, parallelism=0, now=60.0,
    )
    assert got["t1"] == {"position": 0, "eta_s": 0.0}
    assert got["q"] == {"position": 1, "eta_s": 0.0}


def test_keep_only_forgets_flights_no_endpoint_holds() -> None:
    book = QueueBook()
    book.dispatched("t1", "e1", "w", now=0.0)
    book.dispatched("t2", "e2", "w", now=0.0)
    book.keep_only({"t2"})
    assert list(book.flights) == ["t2"]
    assert queue_eta.WINDOW > 0
