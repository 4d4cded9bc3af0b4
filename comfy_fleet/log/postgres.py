"""PostgresEventLog: every port of the event log (comfy_fleet/log/event_log.py) on an asyncpg
pool. Driver errors become the project's once, around each statement (`pg_errors.translated`).

Why no gap-free global position: nothing tails this log by `position`. The read model is written
in the appending statement, the webhook outbox is a query on it, and live readers (SSE, waits)
are woken per task by NOTIFY and then read by (task_id, seq), which has no gaps. Rebuilds read
the whole log after writers are stopped. So we do not need eventsourcing's table lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from comfy_fleet import errors
from comfy_fleet.log import batch_log, events, fleet, group_commit, notices, pg_errors, pg_rows
from comfy_fleet.log import postgres_batches, rebuild, task_state, version_store
from comfy_fleet.delivery.slots import UNKNOWN as UNKNOWN_RECEIVER
from comfy_fleet.log.event_log import (
    DISPATCH_HISTORY,
    EndedCallback,
    QueuedCallback,
    QueuedRow,
    decode_cursor,
    encode_cursor,
    state_from_json,
    state_to_json,
)
from comfy_fleet.log.sql import queries
from comfy_fleet.log.task_state import TaskState

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "task_events_v1"
QUEUED_CHANNEL = "tasks_queued_v1"
ENDED_CHANNEL = "tasks_ended_v1"
#: Append statements of one process in flight at once; the appends that come meanwhile wait and
#: go together (group_commit). Two: one commit's wait overlaps the next statement's work (with
#: 16 writers, 1.4x the appends a second of one, at the same CPU per append; three cost more).
APPENDS_IN_FLIGHT = 2
#: Seconds between pings of the notification listener's connection (a dead one is replaced).
LISTENER_PING_S = 1.0

def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg's default sends `pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL` after every query (a second round trip, and PostgreSQL work,
    for each statement). Pooled connections here never hold session state: LISTEN, advisory
    locks and SET run on dedicated connections (listeners, migrations, rebuild), and SET LOCAL
    ends with its transaction. An open transaction is still rolled back by asyncpg itself."""


class PostgresEventLog(postgres_batches.PostgresBatches, version_store.PostgresVersions):
    """The event log in PostgreSQL. Build with `await PostgresEventLog.connect(dsn)`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        #: channel → handlers of its payloads, on one dedicated LISTEN connection
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self._on_listening: list[Callable[[], None]] = []
        self._notify_conn: asyncpg.Connection | None = None
        self._notify_task: asyncio.Task[None] | None = None
        #: reads of a batch's queued tasks on its notice (postgres_batches), kept referenced
        self._bg_fetches: set[asyncio.Task[Any]] = set()
        #: appends that come together go as one statement (group_commit)
        self._appends = group_commit.GroupCommit(
            self._append_one, self._append_many, max_in_flight=APPENDS_IN_FLIGHT
        )
        self.queued_states = notices.NoticedStates()
        self.ended_states = notices.NoticedStates(keep=0)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 8) -> PostgresEventLog:
        with pg_errors.translated():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                command_timeout=30,
                timeout=10,
            )
        return cls(pool, dsn)

    async def close(self) -> None:
        if self._notify_task is not None:
            self._notify_task.cancel()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        await self._pool.close()

    async def ping(self) -> None:
        with pg_errors.translated():
            await self._pool.fetchval("SELECT 1", timeout=5)

    async def append(
        self,
        task_id: str,
        expected_seq: int,
        new_events: Sequence[events.Event],
        state: TaskState | None = None,
    ) -> TaskState:
        if not new_events:
            raise ValueError("append needs at least one event")
        if state is None and expected_seq > 0:
            state = await self.get(task_id)
            if state.seq != expected_seq:
                raise errors.ConcurrencyConflict(f"task {task_id}: seq {expected_seq + 1} is taken")

        def read_model(before: TaskState | None, after: TaskState) -> tuple[Any, ...]:
            row = state_to_json(after)
            return (
                after.client_task_id, after.workflow, after.status, after.priority,
                after.webhook, after.seq, after.created_at, after.updated_at,
                row, expected_seq,
                notices.payload(notices.queued_notice(before, after), row),
                notices.payload(notices.ended_notice(before, after), row), after.tenant,
                batch_log.batch_ended_notice(before, after),
            )

        new_state, args = pg_rows.append_args(
            task_id, expected_seq, new_events, state, task_state.evolve, read_model
        )
        if not await self._appends.submit(task_id, args):
            # The events were stored (their seqs were free) but the read model row did not
            # match: only a read model edited behind our back does that. Say so loudly.
            raise errors.FleetError(f"task {task_id}: read model out of step with the log")
        return new_state

    async def _append_one(self, args: tuple[Any, ...]) -> bool:
        """One task's append (`append_events`); whether its read-model row was written."""
        with pg_errors.translated(args[0], args[15]):
            row = await self._pool.fetchrow(queries["append_events"], *args)
        return bool(row["upserted"] == 1)

    async def _append_many(self, appends: Sequence[tuple[Any, ...]]) -> list[bool]:
        """Several tasks' appends in one statement (`append_events_many`); for each, whether
        its read-model row was written."""
        with pg_errors.translated():
            row = await self._pool.fetchrow(
                queries["append_events_many"], *pg_rows.many_append_args(appends)
            )
        written = set(row["upserted"] or ())
        return [i in written for i in range(1, len(appends) + 1)]

    async def read(self, task_id: str, after_seq: int = 0) -> list[events.StoredEvent]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["select_task_events"], task_id, after_seq)
        return [pg_rows.stored_event(task_id, r) for r in rows]

    async def get(self, task_id: str) -> TaskState:
        with pg_errors.translated():
            try:
                data = await self._pool.fetchval(queries["select_task_state"], task_id)
            except asyncpg.exceptions.DataError:
                data = None
        if data is None:
            raise errors.TaskNotFound(f"no task {task_id}")
        return state_from_json(data)

    async def find_client_task(
        self, client_task_id: str, tenant: str = task_state.DEFAULT_TENANT
    ) -> TaskState | None:
        with pg_errors.translated():
            data = await self._pool.fetchval(queries["select_client_task"], tenant, client_task_id)
        return state_from_json(data) if data is not None else None

    async def list_tasks(
        self, *, status: str | None = None, workflow: str | None = None,
        client_task_id: str | None = None, limit: int = 50, cursor: str | None = None,
        batch_id: str | None = None, tenant: str | None = None,
    ) -> tuple[list[TaskState], str | None]:
        after: tuple[datetime | None, str | None] = decode_cursor(cursor) if cursor else (None, None)
        # Within a batch: its own query, on the index of a batch's tasks.
        args: tuple[Any, ...] = () if batch_id is None else (batch_id,)
        with pg_errors.translated():
            rows = await self._pool.fetch(
                queries["list_tasks" if batch_id is None else "list_batch_tasks"],
                status, workflow, client_task_id, after[0], after[1], limit + 1, tenant, *args,
            )
        page = rows[:limit]
        next_cursor = (
            encode_cursor(page[-1]["created_at"], str(page[-1]["task_id"]))
            if len(rows) > limit
            else None
        )
        return [state_from_json(r["state"]) for r in page], next_cursor

    async def open_tasks(self) -> list[TaskState]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["open_tasks"])
        return [state_from_json(r["state"]) for r in rows]

    async def queued_tasks(self) -> list[QueuedRow]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["queued_tasks"])
        return [pg_rows.queued_row(r) for r in rows]

    async def dispatch_tenants(self, limit: int = DISPATCH_HISTORY) -> list[str]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["dispatch_tenants"], limit)
        return [r["tenant"] for r in rows]

    async def pending_webhooks(self) -> list[tuple[str, str | None]]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["pending_webhooks"])
        return [(str(r["task_id"]), r["callback_url"]) for r in rows]

    async def ended_among(self, task_ids: Sequence[str]) -> set[str]:
        ids = [t for t in task_ids if pg_rows.is_uuid(t)]
        if not ids:
            return set()
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["ended_among"], ids)
        return {r["task_id"] for r in rows}

    # --- live waits: LISTEN on one dedicated connection, woken per task ---------------------

    async def _ensure_listener(self) -> None:
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            conn = await asyncpg.connect(self._dsn, timeout=10)
            await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
            self._listener = conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        task_id, _, _seq = payload.partition(":")
        for waiter in self._waiters.get(task_id, ()):
            waiter.set()

    async def wait_for_change(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        waiter = asyncio.Event()
        self._waiters[task_id].add(waiter)
        try:
            try:
                await self._ensure_listener()
            except Exception:  # no LISTEN: fall back to a short poll
                log.debug("LISTEN unavailable; polling", exc_info=True)
                await asyncio.sleep(min(timeout_s, 0.5))
                return
            # Check after registering, so a notify between the caller's read and now is seen.
            current = await self.read(task_id, after_seq)
            if current:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout_s)
        finally:
            self._waiters[task_id].discard(waiter)
            if not self._waiters[task_id]:
                self._waiters.pop(task_id, None)

    # --- facts about the fleet -----------------------------------------------------------------

    async def append_fleet(self, event: fleet.FleetEvent) -> None:
        with pg_errors.translated():
            await self._pool.execute(
                queries["append_fleet_event"], event.TYPE, event.SCHEMA_VERSION, event.payload()
            )

    async def read_fleet(self) -> list[fleet.FleetEvent]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["select_fleet_events"])
        return [fleet.decode(r["type"], r["schema_version"], r["payload"]) for r in rows]

    # --- notifications: queued tasks (the router), ended tasks (the router, the webhooks) ------

    async def listen_queued(self, callback: QueuedCallback) -> None:
        """Call `callback(task_id, priority, created_at, workflow, labels, requeued, tenant)` for
        every task submitted or requeued from now on (`notices.queued_notice`), sent by the
        appending statement. Delivery is best effort: callers also scan `queued_tasks()`. A
        writer from before tenants sends no tenant: its tasks are tenant `default`."""

        def on_payload(payload: str) -> None:
            notice = orjson.loads(payload)
            if isinstance(notice, dict):  # a batch's tasks: one notice for them all
                self._on_batch_queued(str(notice["batch"]), callback)
                return
            task_id, priority, created_at, workflow, labels, requeued, *rest = notice
            tenant = rest[0] if rest and isinstance(rest[0], str) else task_state.DEFAULT_TENANT
            self.queued_states.put(task_id, notices.carried_state(rest, 1))
            callback(task_id, priority, created_at, workflow, labels, bool(requeued), tenant)

        await self._listen(QUEUED_CHANNEL, on_payload)

    async def listen_ended(
        self, callback: EndedCallback, on_listening: Callable[[], None] | None = None,
        *, keep_states: bool = False,
    ) -> None:
        """Call `callback(task_id, endpoint, webhook_to)` for every end recorded from now
        on (`notices.ended_notice`); the notice is sent by the appending statement itself, so
        it exists exactly when the end was committed. `on_listening` runs each time LISTEN is
        (re)established: notices sent while it was down are gone, the caller catches up."""

        if keep_states:
            self.ended_states.keep = notices.KEEP_STATES

        def on_payload(payload: str) -> None:
            task_id, endpoint, webhook_to, *rest = orjson.loads(payload)
            if webhook_to is not None:
                self.ended_states.put(task_id, notices.carried_state(rest, 0))
            if webhook_to is True:  # a writer of the version before: pending, receiver unknown
                webhook_to = UNKNOWN_RECEIVER
            callback(task_id, endpoint, webhook_to if isinstance(webhook_to, str) else None)

        await self._listen(ENDED_CHANNEL, on_payload, on_listening)

    async def _listen(
        self, channel: str, on_payload: Callable[[str], None],
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        self._channels.setdefault(channel, []).append(on_payload)
        if on_listening is not None:
            self._on_listening.append(on_listening)
        conn = self._notify_conn
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):  # lost meanwhile: the reconnect adds it
                await conn.add_listener(channel, self._on_channel)  # idempotent
                if on_listening is not None:
                    on_listening()
        if self._notify_task is None:
            self._notify_task = asyncio.create_task(self._listen_forever())

    def _on_channel(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for handler in self._channels.get(channel, ()):
            try:
                handler(payload)
            except Exception:
                log.warning("bad notification on %s: %.200s", channel, payload, exc_info=True)

    async def _listen_forever(self) -> None:
        """One connection LISTENs on every channel asked for; it is pinged, and replaced when
        lost (then `on_listening` callbacks run, after LISTEN, so nothing falls in between)."""
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                try:
                    self._notify_conn = conn
                    for channel in list(self._channels):
                        await conn.add_listener(channel, self._on_channel)
                    for caught_up in list(self._on_listening):
                        caught_up()
                    while not conn.is_closed():
                        await asyncio.sleep(LISTENER_PING_S)
                        await conn.execute("SELECT 1", timeout=5)
                finally:
                    self._notify_conn = None
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("notification listener lost; reconnecting", exc_info=True)
            await asyncio.sleep(1.0)

    # --- rebuild ------------------------------------------------------------------------------

    async def rebuild_read_model(self, workers: int | None = None, *, full: bool = False) -> int:
        """Replace every read-model row by the fold of the log (from the fold snapshot when it
        counts, unless `full`), in one transaction; returns the number of tasks. A full fold runs
        in `workers` sessions (default: one per core); see comfy_fleet/log/rebuild.py."""
        return await rebuild.rebuild_read_model(self._dsn, workers, full=full)


