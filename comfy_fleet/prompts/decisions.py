"""The endpoint's decisions: (task state, what happened to its prompt) → the events to append.

Pure functions beside the fold (`comfy_fleet.log.task_state`): no I/O, no clock, no Ray. The
endpoint actor loads the state, calls one of these, appends what it returns with the state's
seq as the expected seq and, on a conflict, reloads and calls it again. An empty list means
"nothing to record": the task moved on (final, or its prompt_id is not this prompt's any more).
"""

from __future__ import annotations

import enum
from typing import Any

from comfy_fleet.comfy import history
from comfy_fleet.log import cancel, events, task_state
from comfy_fleet.log.task_state import TaskState

#: What `EndpointWorker.dispatch` answers the router: ACCEPTED (it is ours now, or it ended),
#: REFUSED (not dispatchable: already taken, cancelled or final; drop it) or RETRY (we could
#: not take it; it stays queued).
ACCEPTED, REFUSED, RETRY = "accepted", "refused", "retry"


def dispatch(
    s: TaskState, *, endpoint: str, prompt_id: str, max_attempts: int
) -> list[events.Event]:
    """Take a queued task: `dispatched` with our minted prompt_id; a task with a cancel
    requested is cancelled, one out of attempts failed instead."""
    if s.is_final or s.status != task_state.QUEUED:
        return []
    if s.cancel_requested:
        return list(cancel.decide(s, cancel.Where.WAITING).record)
    if s.attempt >= max_attempts:
        return [
            events.TaskFailed(
                code="endpoint_lost",
                message=f"no ComfyUI completed the task in {s.attempt} attempts",
            )
        ]
    return [events.TaskDispatched(endpoint=endpoint, prompt_id=prompt_id, attempt=s.attempt + 1)]


class AfterDispatch(enum.Enum):
    #: the task is ours with this prompt_id: POST it
    POST = "post"
    #: our append ended the task (cancelled or out of attempts)
    ENDED = "ended"
    #: not ours (taken by another, or not dispatchable)
    REFUSED = "refused"


def after_dispatch(
    s: TaskState, new: list[events.Event], *, endpoint: str, prompt_id: str
) -> AfterDispatch:
    """What the append of `dispatch`'s events (`new`, possibly none) leaves us to do.

    Nothing appended yet ours: our `task.dispatched` committed but its answer was lost (the
    connection died after the commit) and the retry conflicted with ourselves. The minted
    prompt_id is in the log, so the task is ours: carry on and POST it.
    """
    if not new:
        ours = (
            s.status == task_state.DISPATCHED and s.endpoint == endpoint and s.prompt_id == prompt_id
        )
        return AfterDispatch.POST if ours else AfterDispatch.REFUSED
    if isinstance(new[0], events.TaskDispatched):
        return AfterDispatch.POST
    return AfterDispatch.ENDED


def _ours(s: TaskState, prompt_id: str) -> bool:
    return not s.is_final and s.prompt_id == prompt_id


def _started_if_missing(s: TaskState, prompt_id: str) -> list[events.Event]:
    return [events.TaskStarted(prompt_id=prompt_id)] if s.status == task_state.DISPATCHED else []


def requeue(s: TaskState, *, endpoint: str, prompt_id: str, reason: str) -> list[events.Event]:
    """The prompt is gone (lost by ComfyUI, never reached it, endpoint away): back to the
    router's queue, or cancelled when a cancel was asked for meanwhile."""
    if not _ours(s, prompt_id):
        return []
    if s.cancel_requested:
        return list(cancel.decide(s, cancel.Where.LOST).record)
    return [events.TaskRequeued(endpoint=endpoint, prompt_id=prompt_id, reason=reason)]


def fail(
    s: TaskState, *, prompt_id: str, error: dict[str, Any], ran: bool
) -> list[events.Event]:
    """The prompt failed with `error` (code, message, node_id, node_type, details); `ran`: it
    ran, so a `started` not yet recorded is recorded with the failure."""
    if not _ours(s, prompt_id):
        return []
    return [
        *(_started_if_missing(s, prompt_id) if ran else []),
        events.TaskFailed(
            code=str(error.get("code") or history.CODE_EXECUTION),
            message=str(error.get("message") or "failed"),
            prompt_id=prompt_id,
            node_id=error.get("node_id"),
            node_type=error.get("node_type"),
            details=error.get("details"),
        ),
    ]


def end(
    s: TaskState, *, prompt_id: str, final: list[events.Event], ran: bool
) -> list[events.Event]:
    """Record `final` (the outputs and the end) for the prompt; `started` first if it ran."""
    if not _ours(s, prompt_id):
        return []
    return [*_started_if_missing(s, prompt_id), *final] if ran else list(final)


def started(s: TaskState, *, prompt_id: str) -> list[events.Event]:
    if not _ours(s, prompt_id) or s.status == task_state.RUNNING:
        return []
    return [events.TaskStarted(prompt_id=prompt_id)]


def progress(
    s: TaskState, *, prompt_id: str, value: int, maximum: int, node: str | None
) -> list[events.Event]:
    if not _ours(s, prompt_id):
        return []
    return [events.TaskProgressed(prompt_id=prompt_id, value=value, max=maximum, node=node)]


def progress_due(
    *, last_at: float, now: float, value: int, maximum: int, min_interval_s: float
) -> bool:
    """A progress event at most every `min_interval_s` per task (the log is not a metrics
    pipe), but the last step always."""
    return now - last_at >= min_interval_s or value >= maximum


class Ending(enum.Enum):
    #: it succeeded: fetch and store its outputs, then record them with the success
    STORE = "store"
    #: interrupted after a cancel was asked for: cancelled
    CANCELLED = "cancelled"
    #: an execution error, or an interruption nobody asked for through us: failed
    FAILED = "failed"


def ending(outcome_kind: str, *, cancel_requested: bool) -> Ending:
    """What a prompt's seen end (`history.SUCCESS`, `ERROR` or `INTERRUPTED`) means."""
    if outcome_kind == history.SUCCESS:
        return Ending.STORE
    if outcome_kind == history.INTERRUPTED and cancel_requested:  # see cancel.ends_cancelled
        return Ending.CANCELLED
    return Ending.FAILED


def stored(
    prompt_id: str, outputs: list[events.TaskOutputStored], failures: list[dict[str, Any]]
) -> list[events.Event]:
    """The end of a prompt whose outputs were fetched: every stored output with the success,
    or with a failure naming the first output that could not be stored (one append, so a
    task never shows half its outputs as succeeded)."""
    if failures:
        first = failures[0]
        return [
            *outputs,
            events.TaskFailed(
                code=first["code"], message=first["message"], prompt_id=prompt_id,
                details={"outputs": failures},
            ),
        ]
    return [*outputs, events.TaskSucceeded(prompt_id=prompt_id)]


class Found(enum.Enum):
    #: in /queue (running or pending): keep following it
    FOLLOW = "follow"
    #: in /history with an end: take up its end
    FINISH = "finish"
    #: in neither: ComfyUI lost it (restarted, or never got it)
    LOST = "lost"


def reconciled(*, in_queue: bool, outcome_kind: str | None) -> Found:
    """Where a watched prompt stands by /queue (read first) and then its /history entry."""
    if in_queue:
        return Found.FOLLOW
    if outcome_kind is None or outcome_kind == history.UNKNOWN:
        return Found.LOST
    return Found.FINISH


def abandoned(prompt_id: str, s: TaskState | None) -> bool:
    """A prompt in ComfyUI's queue that names task `s` (None: no such task in this log, so not
    ours to touch) and that this endpoint does not follow: is it to be dropped? Yes when the
    task ended or moved on to another prompt: the prompt was given up on while its server was
    away (by this actor, or by its life before a restart) and would run for nothing. The task's
    current prompt stays (another endpoint name of the same server follows it)."""
    return s is not None and not _ours(s, prompt_id)


def silent_socket(
    *, outcome_kind: str, connected: bool, last_frame_at: float, posted_at: float
) -> bool:
    """The server finished our prompt yet the socket said nothing since it was posted (not
    even the broadcast status): a zombie socket, to be replaced."""
    return outcome_kind != history.UNKNOWN and connected and last_frame_at < posted_at
