"""The endpoint's decisions: (task state, what happened to its prompt) → events. Pure, no I/O.

Each decision is also folded: what it returns must take the task where the endpoint means it
to go (the fold is the judge of what events do)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet.comfy import history
from comfy_fleet.log import events, task_state
from comfy_fleet.log.events import StoredEvent
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.prompts import decisions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EP = "127.0.0.1:8188"
SUB = events.TaskSubmitted(
    workflow="w", workflow_version="1", params={}, prompt={}, callback_url="http://x/h", request_hash="h"
)


def state(*evs: events.Event) -> TaskState:
    s = task_state.replay(
        StoredEvent(task_id="t1", seq=i, event=e, at=T0 + timedelta(seconds=i))
        for i, e in enumerate([SUB, *evs], 1)
    )
    assert s is not None
    return s


def fold(s: TaskState, new: list[events.Event]) -> TaskState:
    for i, e in enumerate(new, s.seq + 1):
        s = task_state.evolve(s, StoredEvent(task_id=s.task_id, seq=i, event=e, at=T0))
    return s


def dispatched(prompt_id: str = "p1", attempt: int = 1) -> events.Event:
    return events.TaskDispatched(endpoint=EP, prompt_id=prompt_id, attempt=attempt)


def requeued(prompt_id: str = "p1") -> events.Event:
    return events.TaskRequeued(endpoint=EP, prompt_id=prompt_id, reason="lost_by_comfyui")


CANCEL = events.TaskCancelRequested()
FAILED = events.TaskFailed(code="x", message="y")


# --- dispatch -------------------------------------------------------------------------------


def test_dispatch_a_queued_task_takes_it_with_the_minted_prompt_id() -> None:
    s = state()
    new = decisions.dispatch(s, endpoint=EP, prompt_id="p1", max_attempts=3)
    assert new == [events.TaskDispatched(endpoint=EP, prompt_id="p1", attempt=1)]
    after = fold(s, new)
    assert (after.status, after.endpoint, after.prompt_id) == (task_state.DISPATCHED, EP, "p1")
    assert decisions.after_dispatch(after, new, endpoint=EP, prompt_id="p1") is decisions.AfterDispatch.POST


def test_dispatch_a_requeued_task_counts_the_attempt() -> None:
    new = decisions.dispatch(state(dispatched(), requeued()), endpoint=EP, prompt_id="p2", max_attempts=3)
    assert new == [events.TaskDispatched(endpoint=EP, prompt_id="p2", attempt=2)]


def test_dispatch_with_a_cancel_requested_cancels_instead() -> None:
    s = state(CANCEL)
    new = decisions.dispatch(s, endpoint=EP, prompt_id="p1", max_attempts=3)
    assert new == [events.TaskCancelled(where="router")]
    assert fold(s, new).status == task_state.CANCELLED
    assert decisions.after_dispatch(fold(s, new), new, endpoint=EP, prompt_id="p1") is decisions.AfterDispatch.ENDED


def test_dispatch_out_of_attempts_fails_endpoint_lost() -> None:
    s = state(dispatched("p1", 1), requeued("p1"), dispatched("p2", 2), requeued("p2"))
    [new] = decisions.dispatch(s, endpoint=EP, prompt_id="p3", max_attempts=2)
    assert isinstance(new, events.TaskFailed) and new.code == "endpoint_lost"
    assert "2 attempts" in new.message
    assert fold(s, [new]).status == task_state.FAILED


@pytest.mark.parametrize("evs", [(dispatched(),), (FAILED,), (dispatched(), events.TaskStarted(prompt_id="p1"))])
def test_dispatch_of_a_task_not_queued_records_nothing(evs: tuple[events.Event, ...]) -> None:
    assert decisions.dispatch(state(*evs), endpoint=EP, prompt_id="p9", max_attempts=3) == []


def test_after_dispatch_nothing_appended_is_ours_only_with_our_own_prompt_id() -> None:
    # Our append committed but its answer was lost; the retry found the task dispatched.
    ours = state(dispatched("p1"))
    assert decisions.after_dispatch(ours, [], endpoint=EP, prompt_id="p1") is decisions.AfterDispatch.POST
    assert decisions.after_dispatch(ours, [], endpoint=EP, prompt_id="p2") is decisions.AfterDispatch.REFUSED
    assert decisions.after_dispatch(ours, [], endpoint="other:1", prompt_id="p1") is decisions.AfterDispatch.REFUSED
    assert decisions.after_dispatch(state(FAILED), [], endpoint=EP, prompt_id="p1") is decisions.AfterDispatch.REFUSED


def test_dispatch_verdicts_are_the_strings_the_router_knows() -> None:
    assert (decisions.ACCEPTED, decisions.REFUSED, decisions.RETRY) == ("accepted", "refused", "retry")


# --- requeue --------------------------------------------------------------------------------


def test_requeue_puts_our_prompt_back_in_the_queue() -> None:
    s = state(dispatched())
    new = decisions.requeue(s, endpoint=EP, prompt_id="p1", reason="connect_failed")
    assert new == [events.TaskRequeued(endpoint=EP, prompt_id="p1", reason="connect_failed")]
    assert fold(s, new).status == task_state.QUEUED


def test_requeue_with_a_cancel_requested_cancels() -> None:
    s = state(dispatched(), CANCEL)
    new = decisions.requeue(s, endpoint=EP, prompt_id="p1", reason="lost_by_comfyui")
    assert new == [events.TaskCancelled(where="endpoint")]
    assert fold(s, new).status == task_state.CANCELLED


def test_requeue_of_a_prompt_the_task_moved_on_from_records_nothing() -> None:
    assert decisions.requeue(state(dispatched("p2")), endpoint=EP, prompt_id="p1", reason="r") == []
    assert decisions.requeue(state(dispatched(), FAILED), endpoint=EP, prompt_id="p1", reason="r") == []


# --- fail / end -----------------------------------------------------------------------------


def test_fail_after_it_ran_records_started_first() -> None:
    s = state(dispatched())
    error = {"code": history.CODE_EXECUTION, "message": "boom", "node_id": "2", "node_type": "X",
             "details": {"exception_type": "E"}}
    new = decisions.fail(s, prompt_id="p1", error=error, ran=True)
    assert new == [
        events.TaskStarted(prompt_id="p1"),
        events.TaskFailed(code=history.CODE_EXECUTION, message="boom", prompt_id="p1", node_id="2",
                          node_type="X", details={"exception_type": "E"}),
    ]
    after = fold(s, new)
    assert after.status == task_state.FAILED and after.error is not None


def test_fail_before_it_ran_and_with_an_empty_error_uses_the_defaults() -> None:
    [new] = decisions.fail(state(dispatched()), prompt_id="p1", error={}, ran=False)
    assert isinstance(new, events.TaskFailed)
    assert (new.code, new.message, new.prompt_id) == (history.CODE_EXECUTION, "failed", "p1")


def test_fail_when_already_running_adds_no_second_started() -> None:
    s = state(dispatched(), events.TaskStarted(prompt_id="p1"))
    new = decisions.fail(s, prompt_id="p1", error={"code": "c", "message": "m"}, ran=True)
    assert [type(e) for e in new] == [events.TaskFailed]


def test_end_records_started_only_when_it_ran() -> None:
    s = state(dispatched())
    final: list[events.Event] = [events.TaskSucceeded(prompt_id="p1")]
    assert decisions.end(s, prompt_id="p1", final=final, ran=True) == [events.TaskStarted(prompt_id="p1"), *final]
    assert decisions.end(s, prompt_id="p1", final=final, ran=False) == final
    assert fold(s, decisions.end(s, prompt_id="p1", final=final, ran=True)).status == task_state.SUCCEEDED


def test_end_or_fail_of_a_final_or_foreign_task_records_nothing() -> None:
    final: list[events.Event] = [events.TaskSucceeded(prompt_id="p1")]
    for s in (state(dispatched(), FAILED), state(dispatched("p2"))):
        assert decisions.end(s, prompt_id="p1", final=final, ran=True) == []
        assert decisions.fail(s, prompt_id="p1", error={}, ran=True) == []


# --- while it runs --------------------------------------------------------------------------


def test_started_once() -> None:
    s = state(dispatched())
    new = decisions.started(s, prompt_id="p1")
    assert new == [events.TaskStarted(prompt_id="p1")]
    assert decisions.started(fold(s, new), prompt_id="p1") == []
    assert decisions.started(state(dispatched("p2")), prompt_id="p1") == []


def test_progress_of_our_prompt_only() -> None:
    s = state(dispatched(), events.TaskStarted(prompt_id="p1"))
    new = decisions.progress(s, prompt_id="p1", value=3, maximum=20, node="5")
    assert new == [events.TaskProgressed(prompt_id="p1", value=3, max=20, node="5")]
    assert fold(s, new).progress == {"value": 3, "max": 20, "node": "5"}
    assert decisions.progress(s, prompt_id="p0", value=3, maximum=20, node=None) == []


def test_progress_is_thinned_but_the_last_step_always_goes() -> None:
    due = decisions.progress_due
    assert due(last_at=10.0, now=10.6, value=1, maximum=5, min_interval_s=0.5)
    assert not due(last_at=10.0, now=10.2, value=2, maximum=5, min_interval_s=0.5)
    assert due(last_at=10.0, now=10.2, value=5, maximum=5, min_interval_s=0.5)


# --- what a seen end means ------------------------------------------------------------------


def test_ending() -> None:
    assert decisions.ending(history.SUCCESS, cancel_requested=True) is decisions.Ending.STORE
    assert decisions.ending(history.INTERRUPTED, cancel_requested=True) is decisions.Ending.CANCELLED
    assert decisions.ending(history.INTERRUPTED, cancel_requested=False) is decisions.Ending.FAILED
    assert decisions.ending(history.ERROR, cancel_requested=True) is decisions.Ending.FAILED


def _stored(index: int) -> events.TaskOutputStored:
    return events.TaskOutputStored(
        prompt_id="p1", index=index, node_id="9", filename=f"{index}.png", subfolder="",
        kind="images", content_type="image/png", size=1, sha256="ab", s3_key=f"k{index}",
    )


def test_stored_outputs_end_in_one_append_with_the_success() -> None:
    s = state(dispatched())
    final = decisions.stored("p1", [_stored(0), _stored(1)], [])
    assert final == [_stored(0), _stored(1), events.TaskSucceeded(prompt_id="p1")]
    after = fold(s, decisions.end(s, prompt_id="p1", final=final, ran=True))
    assert after.status == task_state.SUCCEEDED and len(after.outputs) == 2


def test_an_output_not_stored_fails_the_task_naming_the_first() -> None:
    failures = [
        {"code": "storage_failed", "message": "S3 away", "filename": "1.png"},
        {"code": "output_fetch_failed", "message": "404", "filename": "2.png"},
    ]
    final = decisions.stored("p1", [_stored(0)], failures)
    assert final[0] == _stored(0)
    last = final[-1]
    assert isinstance(last, events.TaskFailed)
    assert (last.code, last.message, last.details) == ("storage_failed", "S3 away", {"outputs": failures})


# --- reconciliation -------------------------------------------------------------------------


def test_reconciled() -> None:
    assert decisions.reconciled(in_queue=True, outcome_kind=None) is decisions.Found.FOLLOW
    assert decisions.reconciled(in_queue=False, outcome_kind=None) is decisions.Found.LOST
    assert decisions.reconciled(in_queue=False, outcome_kind=history.UNKNOWN) is decisions.Found.LOST
    for kind in (history.SUCCESS, history.ERROR, history.INTERRUPTED):
        assert decisions.reconciled(in_queue=False, outcome_kind=kind) is decisions.Found.FINISH


def test_a_socket_silent_since_the_post_of_a_finished_prompt_is_a_zombie() -> None:
    silent = decisions.silent_socket
    assert silent(outcome_kind=history.SUCCESS, connected=True, last_frame_at=5.0, posted_at=6.0)
    assert not silent(outcome_kind=history.SUCCESS, connected=True, last_frame_at=7.0, posted_at=6.0)
    assert not silent(outcome_kind=history.SUCCESS, connected=False, last_frame_at=5.0, posted_at=6.0)
    assert not silent(outcome_kind=history.UNKNOWN, connected=True, last_frame_at=5.0, posted_at=6.0)
    # Rebuilt from the log after a restart: never posted in this life, never a zombie.
    assert not silent(outcome_kind=history.SUCCESS, connected=True, last_frame_at=0.0, posted_at=0.0)


def test_a_queued_prompt_whose_task_moved_on_is_abandoned() -> None:
    abandoned = decisions.abandoned
    assert abandoned("p1", state(dispatched("p1"), requeued("p1")))  # given up on, queued again
    assert abandoned("p1", state(dispatched("p1"), requeued("p1"), dispatched("p2", attempt=2)))
    assert abandoned("p1", state(dispatched("p1"), CANCEL, events.TaskCancelled(where="waiting")))
    assert abandoned("p1", state(dispatched("p1"), FAILED))
    # Still its task's prompt (followed under another name of the server), or not our task.
    assert not abandoned("p1", state(dispatched("p1")))
    assert not abandoned("p2", state(dispatched("p1"), requeued("p1"), dispatched("p2", attempt=2)))
    assert not abandoned("p1", None)
