"""The log's notices (`tasks_queued_v1`, `tasks_ended_v1`): when an append sends one, what it
says, and the task state it carries.

The appending statement sends a notice of a task that now waits for dispatch, or that ended
(`queued_notice`, `ended_notice`). Each notice also carries the task's state
as that append left it (its read-model row), so the listener that acts on the task at once (the
router handing it to an endpoint, the webhook dispatcher's first try) needs no read: one
statement and one round trip less per task. PostgreSQL caps a payload at 8,000 bytes; a state
that would not fit is left out, and its listener reads the task instead.

A carried state is only a head start: it is the state at that commit, and whoever appends
after reading it does so at its seq, so a newer state is found by the append's conflict.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from comfy_fleet.delivery.slots import receiver_of
from comfy_fleet.log import task_state
from comfy_fleet.log.task_state import TaskState

#: Bytes of a payload beyond which its state is left out (PostgreSQL's limit is 8,000).
MAX_PAYLOAD_BYTES = 7_900
#: States kept per listener until taken (the oldest go first: their task is read instead).
KEEP_STATES = 4_096


def queued_notice(
    before: TaskState | None, after: TaskState
) -> tuple[str, int, float, str, list[str], bool, str] | None:
    """What `listen_queued` callers hear of an append: `(task_id, priority, created_at,
    workflow, labels, requeued, tenant)` when it made the task wait for dispatch, else None.
    `requeued` is False for a submission, True for a task requeued after a lost attempt: the
    endpoint it was given to has let go of it, so the router frees that slot and queues the task
    again. `tenant` comes last: a notice of a writer from before tenants has none (`default`)."""
    if after.status != task_state.QUEUED:
        return None
    if before is not None and before.status == task_state.QUEUED:
        return None
    return (
        after.task_id, after.priority, after.created_at.timestamp(), after.workflow,
        list(after.required_labels), before is not None, after.tenant,
    )


def ended_notice(before: TaskState | None, after: TaskState) -> tuple[str, str | None, str | None] | None:
    """What `listen_ended` callers hear of an append: `(task_id, endpoint, webhook_to)` when it
    gave the task an end (or a new end), or made its webhook pending again; else None.
    `endpoint` is where the task last ran (None if it never did): the router frees its slot
    there. `webhook_to` is not None when there is a delivery to make: the receiver it goes to
    (`delivery_slots.receiver_of` the callback URL), which the dispatcher queues it under, or
    `delivery_slots.UNKNOWN` when a writer of the previous version sent the notice."""
    if after.end_seq is None:
        return None
    pending = after.webhook == task_state.WEBHOOK_PENDING
    if before is not None and before.end_seq == after.end_seq and (
        not pending or before.webhook == task_state.WEBHOOK_PENDING
    ):
        return None
    webhook_to = receiver_of(after.callback_url) if pending and after.callback_url else None
    return after.task_id, after.endpoint, webhook_to


def payload(notice: Sequence[Any] | None, state: dict[str, Any] | None) -> str | None:
    """The notice's payload: its fields, then the state (`state_to_json`) when it fits."""
    if notice is None:
        return None
    if state is not None:
        raw = orjson.dumps([*notice, state])
        if len(raw) <= MAX_PAYLOAD_BYTES:
            return raw.decode()
    return orjson.dumps(list(notice)).decode()


def carried_state(rest: Sequence[Any], index: int) -> dict[str, Any] | None:
    """The state a notice carries after its fields (`rest` is what follows the fields every
    writer sends; `index` the state's place in it), or None (a writer of an earlier version,
    or a state too large for the payload)."""
    value = rest[index] if len(rest) > index else None
    return value if isinstance(value, dict) else None


class NoticedStates:
    """Task states heard in notices, until taken (once) or pushed out by newer ones."""

    def __init__(self, keep: int = KEEP_STATES) -> None:
        #: how many to keep (0: none, for a listener that never takes them)
        self.keep = keep
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def put(self, task_id: str, state: dict[str, Any] | None) -> None:
        if state is None or self.keep <= 0:
            self._states.pop(task_id, None)  # an older one must not be taken for it
            return
        self._states[task_id] = state
        self._states.move_to_end(task_id)
        while len(self._states) > self.keep:
            self._states.popitem(last=False)

    def take(self, task_id: str) -> dict[str, Any] | None:
        """The state heard last for the task (`state_to_json`'s form); forgotten here."""
        return self._states.pop(task_id, None)
