"""`BatchLog` (comfy_fleet/log/batch_log.py) in PostgreSQL: a mixin of `PostgresEventLog`, on its
pool and its one LISTEN connection.

A batch is recorded by one statement (`append_batch`): its stream's first event and its
read-model row, every task's `task.submitted` and read-model row, and the few further events of
some tasks (`task.model_fetched`), each from arrays (`unnest`), so 1,000 tasks cost one round
trip and one commit. The router hears of them by one notice on
`tasks_queued_v1` naming the batch (`{"batch": id}`; a task's notice is a JSON array), on which
`listen_queued` reads the batch's queued tasks and tells its callback of each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from comfy_fleet import errors
from comfy_fleet.batches import batch_state
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.log import events, pg_errors, pg_rows
from comfy_fleet.log.batch_log import AlsoEvents, BatchTaskEndedCallback, stamp_batch
from comfy_fleet.log.event_log import QueuedRow
from comfy_fleet.log.sql import queries
from comfy_fleet.log.task_state import TaskState

log = logging.getLogger(__name__)

BATCH_ENDED_CHANNEL = "batch_tasks_ended_v1"


def batch_queued_payload(batch_id: str) -> str:
    return orjson.dumps({"batch": batch_id}).decode()


def append_batch_args(
    batch_id: str, submitted: events.BatchSubmitted,
    tasks: Sequence[tuple[str, events.TaskSubmitted]], also: AlsoEvents | None = None,
) -> tuple[BatchState, list[TaskState], tuple[Any, ...]]:
    """The batch's and its tasks' states once recorded, and the arguments of `append_batch`
    (its statement's parameters, in their order; bench/batch_intake.py times the statement
    alone)."""
    from comfy_fleet.log import event_log

    at = event_log.now()
    batch, states, more = stamp_batch(batch_id, submitted, tasks, at, also)
    args = (
        batch_id, submitted.TYPE, submitted.SCHEMA_VERSION, submitted.payload(), at,
        submitted.tenant, submitted.client_batch_id, submitted.callback_url,
        [t for t, _ in tasks],
        [ev.payload() for _, ev in tasks],
        [s.created_at for s in states],
        [s.client_task_id for s in states],
        [s.workflow for s in states],
        [s.priority for s in states],
        [event_log.state_to_json(s) for s in states],
        events.TaskSubmitted.SCHEMA_VERSION,
        batch_queued_payload(batch_id),
        [s.seq for s in states],
        [m.task_id for m in more],
        [m.seq for m in more],
        [m.event.TYPE for m in more],
        [m.event.SCHEMA_VERSION for m in more],
        [m.event.payload() for m in more],
        [m.at for m in more],
    )
    return batch, states, args


class PostgresBatches:
    """The batch methods of `PostgresEventLog`."""

    _pool: asyncpg.Pool
    _listen: Any
    _bg_fetches: set[asyncio.Task[Any]]

    async def append_batch(
        self, batch_id: str, submitted: events.BatchSubmitted,
        tasks: Sequence[tuple[str, events.TaskSubmitted]], also: AlsoEvents | None = None,
    ) -> tuple[BatchState, list[TaskState]]:
        batch, states, args = append_batch_args(batch_id, submitted, tasks, also)
        with pg_errors.translated(batch_id, 0):
            row = await self._pool.fetchrow(queries["append_batch"], *args)
        more = sum(s.seq for s in states) - len(states)
        if (row["tasks"], row["events"], row["more"], row["batch_rows"]) != (
            len(tasks), len(tasks), more, 2
        ):
            raise errors.FleetError(f"batch {batch_id}: recorded {dict(row)} of {len(tasks)} tasks")
        return batch, states

    async def append_batch_events(
        self, batch_id: str, expected_seq: int, new_events: Sequence[events.Event],
        state: BatchState | None = None,
    ) -> BatchState:
        if not new_events:
            raise ValueError("append needs at least one event")
        if state is None or state.seq != expected_seq:
            state = await self.get_batch(batch_id)
            if state.seq != expected_seq:
                raise errors.ConcurrencyConflict(
                    f"batch {batch_id}: seq {expected_seq + 1} is taken"
                )

        def read_model(_before: BatchState | None, after: BatchState) -> tuple[Any, ...]:
            return after.status, after.webhook, after.seq, after.updated_at, expected_seq

        new_state, args = pg_rows.append_args(
            batch_id, expected_seq, new_events, state, batch_state.evolve, read_model
        )
        with pg_errors.translated(batch_id, expected_seq):
            row = await self._pool.fetchrow(queries["append_batch_events"], *args)
        if row["updated"] != 1:
            raise errors.FleetError(f"batch {batch_id}: read model out of step with the log")
        return new_state

    async def read_batch(self, batch_id: str) -> list[events.StoredEvent]:
        if not pg_rows.is_uuid(batch_id):
            return []
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["select_batch_events"], batch_id)
        return [pg_rows.stored_event(batch_id, r) for r in rows]

    async def get_batch(self, batch_id: str) -> BatchState:
        state = batch_state.replay(await self.read_batch(batch_id))
        if state is None:
            raise errors.BatchNotFound(f"no batch {batch_id}")
        return state

    async def find_client_batch(self, tenant: str, client_batch_id: str) -> BatchState | None:
        with pg_errors.translated():
            batch_id = await self._pool.fetchval(
                queries["select_client_batch"], tenant, client_batch_id
            )
        return None if batch_id is None else await self.get_batch(batch_id)

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["batch_counts"], batch_id)
        return {r["status"]: int(r["n"]) for r in rows}

    async def batch_last_end(self, batch_id: str) -> datetime | None:
        with pg_errors.translated():
            found: datetime | None = await self._pool.fetchval(queries["batch_last_end"], batch_id)
        return found

    async def open_tasks_of_batch(self, batch_id: str) -> list[str]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["open_tasks_of_batch"], batch_id)
        return [r["task_id"] for r in rows]

    async def taken_client_task_ids(self, tenant: str, client_task_ids: Sequence[str]) -> set[str]:
        if not client_task_ids:
            return set()
        with pg_errors.translated():
            rows = await self._pool.fetch(
                queries["taken_client_task_ids"], tenant, list(client_task_ids)
            )
        return {r["client_task_id"] for r in rows}

    async def batches_to_complete(self, limit: int = 100) -> list[str]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["batches_to_complete"], limit)
        return [r["batch_id"] for r in rows]

    async def pending_batch_webhooks(self) -> list[tuple[str, str | None]]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["pending_batch_webhooks"])
        return [(r["batch_id"], r["callback_url"]) for r in rows]

    async def queued_tasks_of_batch(self, batch_id: str) -> list[QueuedRow]:
        """As `queued_tasks`, for one batch."""
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["queued_tasks_of_batch"], batch_id)
        return [pg_rows.queued_row(r) for r in rows]

    async def listen_batch_task_ended(
        self, callback: BatchTaskEndedCallback, on_listening: Callable[[], None] | None = None
    ) -> None:
        await self._listen(BATCH_ENDED_CHANNEL, callback, on_listening)

    def _on_batch_queued(self, batch_id: str, callback: Callable[..., None]) -> None:
        """A batch's notice: read its queued tasks and tell `callback` of each, as their own
        notices would have (a lost read is caught up by the caller's scan of queued tasks)."""

        async def fetch() -> None:
            try:
                for task_id, priority, created_at, workflow, labels, tenant in (
                    await self.queued_tasks_of_batch(batch_id)
                ):
                    callback(task_id, priority, created_at, workflow, labels, False, tenant)
            except Exception:
                log.debug("reading the queued tasks of batch %s failed", batch_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(fetch())
        self._bg_fetches.add(task)
        task.add_done_callback(self._bg_fetches.discard)
