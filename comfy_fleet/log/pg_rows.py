"""The log's streams as rows of PostgreSQL, for tasks and batches alike
(comfy_fleet/log/postgres.py, comfy_fleet/log/postgres_batches.py): the arguments of an append
(its events, then its read-model row), a stored event read back, a waiting task's row.

No I/O: values in, statement arguments out (and back).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from comfy_fleet.log import event_log, events
from comfy_fleet.log.event_log import QueuedRow

S = TypeVar("S")


def append_args(
    stream_id: str,
    expected_seq: int,
    new_events: Sequence[events.Event],
    state: S | None,
    evolve: Callable[[S | None, events.StoredEvent], S],
    read_model: Callable[[S | None, S], tuple[Any, ...]],
) -> tuple[S, tuple[Any, ...]]:
    """Stamp `new_events` after `expected_seq` and fold them into `state` (the stream's state at
    `expected_seq`) with `evolve`. Returns the new state and the append statement's arguments:
    `$1` the stream's id, `$2`-`$6` the events' seqs, types, schema versions, payloads and
    times (`append_events` and `append_batch_events` alike), then what `read_model(state,
    new state)` gives: the stream's read-model row, in its statement's order."""
    stored = event_log.stamp(stream_id, expected_seq, new_events)
    new_state = state
    for s in stored:
        new_state = evolve(new_state, s)
    assert new_state is not None
    return new_state, (
        stream_id,
        [s.seq for s in stored],
        [s.event.TYPE for s in stored],
        [s.event.SCHEMA_VERSION for s in stored],
        [s.event.payload() for s in stored],
        [s.at for s in stored],
        *read_model(state, new_state),
    )


def stored_event(stream_id: str, r: Mapping[str, Any]) -> events.StoredEvent:
    """A row of `select_task_events` or `select_batch_events`."""
    return events.StoredEvent(
        task_id=stream_id,
        seq=r["seq"],
        event=events.decode(r["type"], r["schema_version"], r["payload"]),
        at=r["recorded_at"],
        position=r["position"],
    )


def queued_row(r: Mapping[str, Any]) -> QueuedRow:
    """A row of `queued_tasks` or `queued_tasks_of_batch`."""
    return (
        str(r["task_id"]), r["priority"], r["created_at"].timestamp(), r["workflow"],
        list(r["labels"] or []), r["tenant"],
    )


def is_uuid(text: str) -> bool:
    """Whether `text` can name a stream here (task and batch ids are uuids): a query by any
    other id finds nothing, and is not sent."""
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


#: In an append's arguments (`append_args`): where the events end and the read-model row starts.
_EVENT_ARGS = 6


def many_append_args(appends: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The arguments of `append_events_many` for several tasks' `append_events` arguments (each
    as `append_args` gives them): the events of all, flattened, then the read-model row of
    each, column by column."""
    task_ids: list[Any] = []
    columns: list[list[Any]] = [[] for _ in range(5)]
    for a in appends:
        task_ids.extend([a[0]] * len(a[1]))
        for column, values in zip(columns, a[1:_EVENT_ARGS], strict=True):
            column.extend(values)
    rows = [list(col) for col in zip(*(a[_EVENT_ARGS:] for a in appends), strict=True)]
    return (task_ids, *columns, [a[0] for a in appends], *rows)
