"""The one place that decides a cancel (comfy_fleet.log.cancel). Pure, no I/O.

What it decides is also folded: the events it records must end the task cancelled, and a cancel
met by a success while storing must fold into `cancelled`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet.log import cancel, events, task_state
from comfy_fleet.log.events import StoredEvent
from comfy_fleet.log.task_state import TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUB = events.TaskSubmitted(
    workflow="w", workflow_version="1", params={}, prompt={}, callback_url="http://x/h", request_hash="h"
)
DISPATCHED = events.TaskDispatched(endpoint="a:1", prompt_id="p", attempt=1)


def state(*evs: events.Event) -> TaskState:
    s = task_state.replay(
        StoredEvent(task_id="t1", seq=i, event=e, at=T0 + timedelta(seconds=i))
        for i, e in enumerate([SUB, *evs], 1)
    )
    assert s is not None
    return s


def fold(s: TaskState, new: list[events.Event] | tuple[events.Event, ...]) -> TaskState:
    for i, e in enumerate(new, s.seq + 1):
        s = task_state.evolve(s, StoredEvent(task_id=s.task_id, seq=i, event=e, at=T0))
    return s


def test_the_request_is_recorded_once_and_never_on_an_ended_task() -> None:
    s = state()
    new = cancel.request(s)
    assert [type(e) for e in new] == [events.TaskCancelRequested]
    s = fold(s, new)
    assert s.cancel_requested and not s.is_final
    assert cancel.request(s) == []
    assert cancel.request(state(events.TaskFailed(code="c", message="m"))) == []


@pytest.mark.parametrize(
    ("where", "action", "recorded_where"),
    [
        (cancel.Where.WAITING, cancel.Action.REMOVE, "router"),
        (cancel.Where.COMFYUI_QUEUE, cancel.Action.DELETE_FROM_QUEUE, "comfyui_queue"),
        (cancel.Where.RUNNING, cancel.Action.INTERRUPT, "running"),
        (cancel.Where.LOST, cancel.Action.END, "endpoint"),
    ],
)
def test_where_the_action_ends_the_task_it_is_recorded_cancelled_there(
    where: cancel.Where, action: cancel.Action, recorded_where: str
) -> None:
    s = state(DISPATCHED, events.TaskCancelRequested())
    decision = cancel.decide(s, where)
    assert decision.action is action
    assert decision.record == (events.TaskCancelled(where=recorded_where),)
    ended = fold(s, decision.record)
    assert ended.status == task_state.CANCELLED and ended.end_type == "task.cancelled"


def test_storing_is_left_to_finish_and_its_success_folds_into_cancelled() -> None:
    s = state(DISPATCHED, events.TaskCancelRequested())
    decision = cancel.decide(s, cancel.Where.STORING)
    assert decision.action is cancel.Action.LET_FINISH and decision.record == ()
    assert cancel.ends_cancelled(s)
    ended = fold(s, [events.TaskSucceeded(prompt_id="p")])
    assert ended.status == task_state.CANCELLED


def test_an_ended_task_or_one_without_a_request_is_left_alone() -> None:
    final = state(DISPATCHED, events.TaskCancelRequested(), events.TaskFailed(code="c", message="m"))
    plain = state(DISPATCHED)
    for where in cancel.Where:
        assert cancel.decide(final, where) == cancel.Decision(cancel.Action.NOTHING)
        assert cancel.decide(plain, where) == cancel.Decision(cancel.Action.NOTHING)
    assert not cancel.ends_cancelled(plain)
    assert fold(plain, [events.TaskSucceeded(prompt_id="p")]).status == task_state.SUCCEEDED


def test_the_answers_places_give_back() -> None:
    """The router and the endpoint answer with these strings (the ingress reads `removed`)."""
    answers = {w: cancel.decide(cancel.REQUESTED, w).answer for w in cancel.Where}
    assert answers == {
        cancel.Where.WAITING: "removed",
        cancel.Where.COMFYUI_QUEUE: "cancelled",
        cancel.Where.RUNNING: "interrupting",
        cancel.Where.STORING: "storing",
        cancel.Where.LOST: "ended",
        cancel.Where.ENDED: "nothing",
    }


def test_places_acting_on_a_recorded_request_see_it_requested_and_not_ended() -> None:
    assert cancel.REQUESTED.cancel_requested and not cancel.REQUESTED.is_final
