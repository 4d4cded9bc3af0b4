"""The event log's port for batches (POST /batches), and its in-memory implementation.

Contract of `append_batch(batch_id, submitted, tasks, also)`:
- the batch's `batch.submitted` (seq 1 of its stream), each task's `task.submitted` (seq 1 of
  its own) and the events `also` gives a task after it (seq 2 on: the `task.model_fetched` of
  the models fetched for it, as a single submission records them) are stored in one
  transaction, with every read-model row: all of them, or none;
- a client_batch_id the tenant already used raises `errors.DuplicateClientBatchId`, a taken
  client_task_id `errors.DuplicateClientTaskId`; nothing is stored then;
- the tasks wait for dispatch from the commit on (`listen_queued` callers hear of each one).

`append_batch_events` is `append` for the batch's stream: optimistic concurrency on its seq,
so `batch.completed` is recorded once however many writers decide it at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from comfy_fleet import errors
from comfy_fleet.batches import batch_state
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.log import events, notices, task_state
from comfy_fleet.log.task_state import TaskState

#: (batch_id) of a batch one of whose tasks just ended (see `batch_ended_notice`)
BatchTaskEndedCallback = Callable[[str], None]


def batch_ended_notice(before: TaskState | None, after: TaskState) -> str | None:
    """The batch_id to tell `listen_batch_task_ended` callers of when an append gave a task of a
    batch its first end (a later end, e.g. outputs recovered, does not change the counts' total
    of ended tasks); else None."""
    if after.batch_id is None or not after.is_final:
        return None
    if before is not None and before.is_final:
        return None
    return after.batch_id


#: task_id → the events to record after its `task.submitted` (`append_batch`'s `also`)
AlsoEvents = Mapping[str, Sequence[events.Event]]


def stamp_batch(
    batch_id: str,
    submitted: events.BatchSubmitted,
    tasks: Sequence[tuple[str, events.TaskSubmitted]],
    at: datetime,
    also: AlsoEvents | None = None,
) -> tuple[BatchState, list[TaskState], list[events.StoredEvent]]:
    """The batch's and its tasks' states once recorded, and the stored form of `also` (each
    task's further events, seq 2 on, at the task's own time). Task `i` is recorded `i`
    microseconds after the batch, so their creation order (the router's FIFO, the listing) is
    the batch's order."""
    batch = batch_state.evolve(
        None, events.StoredEvent(task_id=batch_id, seq=1, event=submitted, at=at)
    )
    states: list[TaskState] = []
    more: list[events.StoredEvent] = []
    for i, (task_id, ev) in enumerate(tasks):
        task_at = at + timedelta(microseconds=i)
        state = task_state.apply(None, task_id, 1, task_at, ev)
        for seq, extra in enumerate((also or {}).get(task_id, ()), start=2):
            stored = events.StoredEvent(task_id=task_id, seq=seq, event=extra, at=task_at)
            state = task_state.evolve(state, stored, in_place=True)
            more.append(stored)
        states.append(state)
    return batch, states, more


class BatchLog(Protocol):
    """Batches: their streams, their tasks' counts, and the notices of their tasks' ends."""

    async def append_batch(
        self, batch_id: str, submitted: events.BatchSubmitted,
        tasks: Sequence[tuple[str, events.TaskSubmitted]], also: AlsoEvents | None = None,
    ) -> tuple[BatchState, list[TaskState]]: ...

    async def append_batch_events(
        self, batch_id: str, expected_seq: int, new_events: Sequence[events.Event],
        state: BatchState | None = None,
    ) -> BatchState: ...

    async def read_batch(self, batch_id: str) -> list[events.StoredEvent]: ...

    async def get_batch(self, batch_id: str) -> BatchState:
        """The fold of the batch's stream; BatchNotFound when unknown."""
        ...

    async def find_client_batch(self, tenant: str, client_batch_id: str) -> BatchState | None: ...

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The batch's tasks by status (only statuses it has)."""
        ...

    async def batch_last_end(self, batch_id: str) -> datetime | None:
        """When the last of the batch's tasks that ended did."""
        ...

    async def open_tasks_of_batch(self, batch_id: str) -> list[str]: ...

    async def taken_client_task_ids(self, tenant: str, client_task_ids: Sequence[str]) -> set[str]:
        """Which of these client_task_ids a task of `tenant` already has (unique per tenant)."""
        ...

    async def batches_to_complete(self, limit: int = 100) -> list[str]:
        """Running batches whose tasks have all ended (their completion is still to record)."""
        ...

    async def pending_batch_webhooks(self) -> list[tuple[str, str | None]]:
        """(batch_id, callback_url) of each completed batch whose webhook is to deliver."""
        ...

    async def listen_batch_task_ended(
        self, callback: BatchTaskEndedCallback, on_listening: Callable[[], None] | None = None
    ) -> None:
        """Be told (batch_id) of each end of a batch's task recorded from now on. Best effort,
        as `listen_ended`: `on_listening` runs each time listening (re)starts."""
        ...


class InMemoryBatches:
    """`BatchLog` for `InMemoryEventLog` (a mixin over its task streams and states)."""

    _streams: dict[str, list[events.StoredEvent]]
    _states: dict[str, TaskState]
    _clients: dict[tuple[str, str], str]
    _position: int
    _queued: list[Any]

    def _batches_init(self) -> None:
        self._batch_streams: dict[str, list[events.StoredEvent]] = {}
        self._client_batches: dict[tuple[str, str], str] = {}
        self._batch_ended: list[BatchTaskEndedCallback] = []

    async def append_batch(
        self, batch_id: str, submitted: events.BatchSubmitted,
        tasks: Sequence[tuple[str, events.TaskSubmitted]], also: AlsoEvents | None = None,
    ) -> tuple[BatchState, list[TaskState]]:
        from comfy_fleet.log import event_log

        key = (submitted.tenant, submitted.client_batch_id or "")
        if submitted.client_batch_id is not None and key in self._client_batches:
            raise errors.DuplicateClientBatchId("client_batch_id is already recorded")
        ctids = [ev.client_task_id for _, ev in tasks if ev.client_task_id is not None]
        if len(set(ctids)) != len(ctids) or any(
            (submitted.tenant, c) in self._clients for c in ctids
        ):
            raise errors.DuplicateClientTaskId("client_task_id is already recorded")
        if batch_id in self._batch_streams or any(t in self._streams for t, _ in tasks):
            raise errors.ConcurrencyConflict(f"batch {batch_id}: an id is taken")
        at = event_log.now()
        batch, states, more = stamp_batch(batch_id, submitted, tasks, at, also)
        self._position += 1
        self._batch_streams[batch_id] = [
            events.StoredEvent(batch_id, 1, submitted, at, position=self._position)
        ]
        if submitted.client_batch_id is not None:
            self._client_batches[key] = batch_id
        for (task_id, ev), state in zip(tasks, states, strict=True):
            self._position += 1
            self._streams[task_id] = [
                events.StoredEvent(task_id, 1, ev, state.created_at, position=self._position)
            ]
            self._states[task_id] = state
            if state.client_task_id:
                self._clients[(state.tenant, state.client_task_id)] = task_id
        for stored in more:
            self._position += 1
            self._streams[stored.task_id].append(
                dataclasses.replace(stored, position=self._position)
            )
        for state in states:
            notice = notices.queued_notice(None, state)
            if notice is not None:
                for cb in self._queued:
                    cb(*notice)
        return batch, [s.copy() for s in states]

    async def append_batch_events(
        self, batch_id: str, expected_seq: int, new_events: Sequence[events.Event],
        state: BatchState | None = None,
    ) -> BatchState:
        from comfy_fleet.log import event_log

        stream = self._batch_streams.get(batch_id)
        if stream is None:
            raise errors.BatchNotFound(f"no batch {batch_id}")
        if len(stream) != expected_seq:
            raise errors.ConcurrencyConflict(f"batch {batch_id}: seq {expected_seq + 1} is taken")
        new_state = state if state is not None else batch_state.replay(stream)
        for stored in event_log.stamp(batch_id, expected_seq, new_events):
            self._position += 1
            stored = dataclasses.replace(stored, position=self._position)
            new_state = batch_state.evolve(new_state, stored)
            stream.append(stored)
        assert new_state is not None
        return new_state

    async def read_batch(self, batch_id: str) -> list[events.StoredEvent]:
        return list(self._batch_streams.get(batch_id, []))

    async def get_batch(self, batch_id: str) -> BatchState:
        state = batch_state.replay(self._batch_streams.get(batch_id, []))
        if state is None:
            raise errors.BatchNotFound(f"no batch {batch_id}")
        return state

    async def find_client_batch(self, tenant: str, client_batch_id: str) -> BatchState | None:
        batch_id = self._client_batches.get((tenant, client_batch_id))
        return None if batch_id is None else await self.get_batch(batch_id)

    def _batch_tasks(self, batch_id: str) -> list[TaskState]:
        return [s for s in self._states.values() if s.batch_id == batch_id]

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self._batch_tasks(batch_id):
            counts[s.status] = counts.get(s.status, 0) + 1
        return counts

    async def batch_last_end(self, batch_id: str) -> datetime | None:
        ends = [s.finished_at for s in self._batch_tasks(batch_id) if s.finished_at]
        return max(ends) if ends else None

    async def open_tasks_of_batch(self, batch_id: str) -> list[str]:
        tasks = sorted(self._batch_tasks(batch_id), key=lambda s: s.created_at)
        return [s.task_id for s in tasks if not s.is_final]

    async def taken_client_task_ids(self, tenant: str, client_task_ids: Sequence[str]) -> set[str]:
        return {c for c in client_task_ids if (tenant, c) in self._clients}

    async def batches_to_complete(self, limit: int = 100) -> list[str]:
        out = []
        for batch_id in self._batch_streams:
            state = await self.get_batch(batch_id)
            if state.end_seq is None and not await self.open_tasks_of_batch(batch_id):
                out.append(batch_id)
        return out[:limit]

    async def pending_batch_webhooks(self) -> list[tuple[str, str | None]]:
        out = []
        for batch_id in self._batch_streams:
            state = await self.get_batch(batch_id)
            if state.webhook == task_state.WEBHOOK_PENDING:
                out.append((batch_id, state.callback_url))
        return out

    async def listen_batch_task_ended(
        self, callback: BatchTaskEndedCallback, on_listening: Callable[[], None] | None = None
    ) -> None:
        self._batch_ended.append(callback)
        if on_listening is not None:
            on_listening()

    def _notify_batch_ended(self, before: TaskState | None, after: TaskState) -> None:
        batch_id = batch_ended_notice(before, after)
        if batch_id is not None:
            for cb in self._batch_ended:
                cb(batch_id)
