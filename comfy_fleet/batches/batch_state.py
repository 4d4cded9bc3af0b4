"""A batch's state as a pure fold of its stream (`batch_events`), and the batch as the API shows
it. The counts are not in the stream: they are the batch's tasks' statuses (each a fold of its
own stream), read from the read model when the batch is shown.

`evolve(state, stored)` is the only code that changes a BatchState; `replay(events)` folds a
whole stream. A stream that skips a seq fails loudly, as a task's does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from comfy_fleet import errors
from comfy_fleet.log import events, task_state

RUNNING, COMPLETED = "running", "completed"
#: Every task status, in the order the counts show them.
STATUSES = (
    task_state.QUEUED, task_state.DISPATCHED, task_state.RUNNING,
    task_state.SUCCEEDED, task_state.FAILED, task_state.CANCELLED,
)


@dataclass
class BatchState:
    batch_id: str
    seq: int
    tenant: str
    task_ids: list[str]
    client_batch_id: str | None
    callback_url: str | None
    priority: int
    request_hash: str
    kind: str
    created_at: datetime
    updated_at: datetime
    #: set by `batch.completed` (recorded once, when every task has ended)
    finished_at: datetime | None = None
    completion_counts: dict[str, int] | None = None
    #: seq of `batch.completed`: the batch webhook's id derives from it
    end_seq: int | None = None
    cancel_requested: bool = False
    webhook: str | None = None
    webhook_attempts: int = 0

    @property
    def status(self) -> str:
        """As recorded: `completed` once `batch.completed` is in the stream."""
        return COMPLETED if self.end_seq is not None else RUNNING


def evolve(state: BatchState | None, stored: events.StoredEvent) -> BatchState:
    """Apply one stored event of a batch stream; returns a new state (the input is unchanged)."""
    ev, seq, at = stored.event, stored.seq, stored.at
    if state is None:
        if not isinstance(ev, events.BatchSubmitted) or seq != 1:
            raise errors.FleetError(f"batch {stored.task_id}: stream starts with {ev.TYPE} #{seq}")
        return BatchState(
            batch_id=stored.task_id, seq=1, tenant=ev.tenant, task_ids=list(ev.task_ids),
            client_batch_id=ev.client_batch_id, callback_url=ev.callback_url,
            priority=ev.priority, request_hash=ev.request_hash, kind=ev.kind,
            created_at=at, updated_at=at,
        )
    if seq != state.seq + 1:
        raise errors.FleetError(f"batch {state.batch_id}: event seq {seq} follows {state.seq}")
    s = dataclasses.replace(state, seq=seq, updated_at=at)
    match ev:
        case events.BatchCancelRequested():
            s.cancel_requested = True
        case events.BatchCompleted() if s.end_seq is None:
            s.end_seq = seq
            s.finished_at = datetime.fromisoformat(ev.finished_at)
            s.completion_counts = dict(ev.counts)
            s.webhook = task_state.WEBHOOK_PENDING if s.callback_url else None
        case events.WebhookAttempted():
            s.webhook_attempts = max(s.webhook_attempts, ev.attempt)
        case events.WebhookDelivered():
            s.webhook_attempts = max(s.webhook_attempts, ev.attempt)
            s.webhook = task_state.WEBHOOK_DELIVERED
        case events.WebhookDead():
            s.webhook = task_state.WEBHOOK_DEAD
        case events.WebhookRedeliveryRequested() if s.end_seq is not None and s.callback_url:
            s.webhook, s.webhook_attempts = task_state.WEBHOOK_PENDING, 0
        case _:
            pass  # a second completion, a late try: kept in the log, changes nothing
    return s


def replay(stream: Iterable[events.StoredEvent]) -> BatchState | None:
    state: BatchState | None = None
    for stored in stream:
        state = evolve(state, stored)
    return state


def full_counts(by_status: Mapping[str, int]) -> dict[str, int]:
    """Every status with its count (0 when the batch has none in it)."""
    return {status: int(by_status.get(status, 0)) for status in STATUSES}


def all_ended(state: BatchState, counts: Mapping[str, int]) -> bool:
    ended = sum(counts.get(s, 0) for s in task_state.FINAL_STATUSES)
    return ended >= len(state.task_ids)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def to_view(
    state: BatchState, counts: Mapping[str, int], last_end: datetime | None = None
) -> dict[str, Any]:
    """The batch as the API shows it. `counts` are its tasks' statuses now; `last_end` when its
    last task ended (used while every task has ended but `batch.completed` is not yet recorded:
    the batch is completed as soon as its tasks are, whoever records it)."""
    shown = full_counts(counts)
    done = state.end_seq is not None or all_ended(state, shown)
    return {
        "batch_id": state.batch_id,
        "client_batch_id": state.client_batch_id,
        "tenant": state.tenant,
        "status": COMPLETED if done else RUNNING,
        "counts": shown,
        "task_ids": list(state.task_ids),
        "callback_url": state.callback_url,
        "priority": state.priority,
        "cancel_requested": state.cancel_requested,
        "webhook": state.webhook,
        "created_at": _iso(state.created_at),
        "finished_at": _iso(state.finished_at or (last_end if done else None)),
    }
