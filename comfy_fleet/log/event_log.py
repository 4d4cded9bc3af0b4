"""The event log's ports: append a task's events with optimistic concurrency and read them back
(`TaskStream`), query the read model of folded task states (`TaskQueries`), hear of what was
just recorded (`TaskNotices`), and the fleet's own events (`FleetLog`); `EventLog` is all of them.

Contract of `append(task_id, expected_seq, new_events, state)`:
- the events get seqs `expected_seq + 1 …` and are stored atomically, all or none;
- if another writer already stored `expected_seq + 1`, nothing is stored and
  `errors.ConcurrencyConflict(task_id, expected_seq)` is raised: the caller reloads, re-decides
  and retries a bounded number of times (this also makes a retried actor call safe);
- a `task.submitted` whose client_task_id is taken raises `errors.DuplicateClientTaskId`;
- the read model row (the folded state) is written in the same transaction, so it never lags;
- `state` is the caller's state at `expected_seq` (None loads it); the new state is returned.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from comfy_fleet import errors

from comfy_fleet.log import events, fleet, notices, task_state, version_store
from comfy_fleet.log.batch_log import BatchLog, InMemoryBatches
from comfy_fleet.log.task_state import TaskState


#: (task_id, priority, created_at, workflow, labels, requeued, tenant) of a task that now waits
#: for dispatch (see `queued_notice`)
QueuedCallback = Callable[[str, int, float, str, list[str], bool, str], None]
#: (task_id, priority, created_at, workflow, labels, tenant) of a task waiting for dispatch
QueuedRow = tuple[str, int, float, str, list[str], str]
#: How many of the latest dispatches the router replays into its fair share at start.
DISPATCH_HISTORY = 10_000
#: (task_id, endpoint, webhook_to) of a task whose end was just recorded (see `ended_notice`)
EndedCallback = Callable[[str, str | None, str | None], None]


class TaskStream(Protocol):
    """A task's events: append with optimistic concurrency (the module's contract), read back."""

    async def append(
        self,
        task_id: str,
        expected_seq: int,
        new_events: Sequence[events.Event],
        state: TaskState | None = None,
    ) -> TaskState: ...

    async def read(self, task_id: str, after_seq: int = 0) -> list[events.StoredEvent]: ...


class TaskQueries(Protocol):
    """The read model of folded task states (written with the events, so it never lags)."""

    async def get(self, task_id: str) -> TaskState:
        """The task's folded state from the read model; TaskNotFound when unknown."""
        ...

    async def find_client_task(
        self, client_task_id: str, tenant: str = task_state.DEFAULT_TENANT
    ) -> TaskState | None:
        """The task `tenant` recorded with this client_task_id (idempotency is per tenant)."""
        ...

    async def list_tasks(
        self, *, status: str | None = None, workflow: str | None = None,
        client_task_id: str | None = None, limit: int = 50, cursor: str | None = None,
        batch_id: str | None = None, tenant: str | None = None,
    ) -> tuple[list[TaskState], str | None]:
        """A page of tasks, newest first; `tenant` None: every tenant's."""
        ...

    async def open_tasks(self) -> list[TaskState]:
        """Every task that is not final, oldest first (what the actors rebuild from)."""
        ...

    async def queued_tasks(self) -> list[QueuedRow]:
        """Every task waiting for dispatch: (task_id, priority, created_at, workflow, labels,
        tenant), oldest first."""
        ...

    async def dispatch_tenants(self, limit: int = DISPATCH_HISTORY) -> list[str]:
        """The tenant of each of the latest `limit` dispatches (`task.dispatched`), oldest
        first: what the router's fair share is rebuilt from."""
        ...

    async def pending_webhooks(self) -> list[tuple[str, str | None]]:
        """(task_id, callback_url) of each final task whose webhook is still to deliver (the
        outbox), oldest change first. Ids only: under a backlog to a dead receiver the outbox
        can hold a great many, and whoever scans it reads each task when it delivers."""
        ...

    async def ended_among(self, task_ids: Sequence[str]) -> set[str]:
        """The ids among `task_ids` of tasks that have ended (unknown ids are not)."""
        ...


class TaskNotices(Protocol):
    """Being told of what was just recorded. Best effort: callers also scan the queries."""

    #: the states the queued notices carried (`comfy_fleet.log.notices`), until taken
    queued_states: notices.NoticedStates
    #: the states the ended notices of tasks with a webhook carried, until taken (kept only
    #: once a listener asked for them: `listen_ended(keep_states=True)`)
    ended_states: notices.NoticedStates

    async def listen_queued(self, callback: QueuedCallback) -> None:
        """Be told of every task that waits for dispatch from now on, submitted or requeued
        (`queued_notice`). Best effort: scan `queued_tasks()` as a fallback."""
        ...

    async def listen_ended(
        self, callback: EndedCallback, on_listening: Callable[[], None] | None = None,
        *, keep_states: bool = False,
    ) -> None:
        """Be told of every task end recorded from now on (`ended_notice`), by whichever writer;
        with `keep_states`, keep the states they carry in `ended_states`.
        Best effort: a notice sent while the listener was reconnecting is lost, so
        `on_listening` is called each time listening (re)starts, for the caller to catch up
        from the log."""
        ...

    async def wait_for_change(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        """Return when the task has an event after `after_seq`, or after the timeout."""
        ...


class FleetLog(Protocol):
    """Facts about the fleet: endpoints added or removed at run time (comfy_fleet/log/fleet.py)."""

    async def append_fleet(self, event: fleet.FleetEvent) -> None:
        """Record a fact about the fleet (comfy_fleet/log/fleet.py)."""
        ...

    async def read_fleet(self) -> list[fleet.FleetEvent]: ...


class EventLog(
    TaskStream, TaskQueries, TaskNotices, FleetLog, BatchLog,
    version_store.WorkflowVersions, Protocol,
):
    """The whole log, for whoever holds its connection (the ingress, the tools). Its users
    are typed on the ports they use: the stream, the queries, the notices, the fleet log.
    `PostgresEventLog` and `InMemoryEventLog` implement them all."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def now() -> datetime:
    return datetime.now(UTC)


def stamp(task_id: str, expected_seq: int, new_events: Sequence[events.Event]) -> list[events.StoredEvent]:
    at = now()
    return [
        events.StoredEvent(task_id=task_id, seq=expected_seq + i, event=ev, at=at)
        for i, ev in enumerate(new_events, start=1)
    ]


# --- the folded state as JSON (the read model's `state` column) -------------------------------

_DATETIME_FIELDS = ("created_at", "updated_at", "finished_at")


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TaskState))


def state_to_json(s: TaskState) -> dict[str, Any]:
    # A shallow dict: `dataclasses.asdict` deep-copies the prompt and every output on each
    # append, which was most of a rebuild's time. orjson walks the nested values as they are.
    data = {name: getattr(s, name) for name in _STATE_FIELDS}
    for name in _DATETIME_FIELDS:
        data[name] = data[name].isoformat() if data[name] else None
    return data


def state_json(s: TaskState) -> bytes:
    """`orjson.dumps(state_to_json(s))` in one step, for rebuilds (a row per task): orjson writes
    the dataclass's fields as they are, and its datetimes as `isoformat()` does for the UTC
    times a state holds. tests/unit/test_rebuild.py checks the two agree."""
    return orjson.dumps(s)


def state_from_json(data: dict[str, Any]) -> TaskState:
    data = dict(data)
    for name in _DATETIME_FIELDS:
        data[name] = datetime.fromisoformat(data[name]) if data[name] else None
    return TaskState(**data)


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = orjson.dumps([created_at.isoformat(), task_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, task_id = orjson.loads(raw)
        return datetime.fromisoformat(created), str(task_id)
    except Exception:
        raise errors.InvalidRequest("cursor: not a cursor returned by this API") from None


class InMemoryEventLog(InMemoryBatches, version_store.InMemoryVersions):
    """The EventLog contract in memory, for unit tests of actors and the fold."""

    def __init__(self) -> None:
        self._streams: dict[str, list[events.StoredEvent]] = {}
        self._states: dict[str, TaskState] = {}
        #: (tenant, client_task_id) → task_id
        self._clients: dict[tuple[str, str], str] = {}
        #: the tenant of every task.dispatched, in log order
        self._dispatches: list[str] = []
        self._position = 0
        self._changed = asyncio.Condition()
        self._queued: list[QueuedCallback] = []
        self._ended: list[EndedCallback] = []
        self.queued_states = notices.NoticedStates()
        self.ended_states = notices.NoticedStates(keep=0)
        self._fleet: list[fleet.FleetEvent] = []
        self._batches_init()

    async def append(
        self,
        task_id: str,
        expected_seq: int,
        new_events: Sequence[events.Event],
        state: TaskState | None = None,
    ) -> TaskState:
        stream = self._streams.setdefault(task_id, [])
        if len(stream) != expected_seq:
            raise errors.ConcurrencyConflict(f"task {task_id}: seq {expected_seq + 1} is taken")
        stored = stamp(task_id, expected_seq, new_events)
        if expected_seq == 0 and isinstance(new_events[0], events.TaskSubmitted):
            ctid = new_events[0].client_task_id
            if ctid is not None and (new_events[0].tenant, ctid) in self._clients:
                raise errors.DuplicateClientTaskId(f"client_task_id {ctid!r} exists")
        base = self._states.get(task_id) if state is None else state
        new_state = base
        for i, s in enumerate(stored):
            self._position += 1
            stored[i] = dataclasses.replace(s, position=self._position)
            new_state = task_state.evolve(new_state, stored[i])
        assert new_state is not None
        stream.extend(stored)
        self._states[task_id] = new_state
        if new_state.client_task_id and expected_seq == 0:
            self._clients[(new_state.tenant, new_state.client_task_id)] = task_id
        self._dispatches += [
            new_state.tenant for s in stored if isinstance(s.event, events.TaskDispatched)
        ]
        queued = notices.queued_notice(base, new_state)
        if queued is not None:
            self.queued_states.put(task_id, _carried(new_state))
            for cb in self._queued:
                cb(*queued)
        notice = notices.ended_notice(base, new_state)
        if notice is not None:
            if notice[2] is not None:
                self.ended_states.put(task_id, _carried(new_state))
            for ended in self._ended:
                ended(*notice)
        self._notify_batch_ended(base, new_state)
        async with self._changed:
            self._changed.notify_all()
        return new_state

    async def read(self, task_id: str, after_seq: int = 0) -> list[events.StoredEvent]:
        return [e for e in self._streams.get(task_id, []) if e.seq > after_seq]

    async def get(self, task_id: str) -> TaskState:
        try:
            return self._states[task_id].copy()
        except KeyError:
            raise errors.TaskNotFound(f"no task {task_id}") from None

    async def find_client_task(
        self, client_task_id: str, tenant: str = task_state.DEFAULT_TENANT
    ) -> TaskState | None:
        task_id = self._clients.get((tenant, client_task_id))
        return self._states[task_id].copy() if task_id else None

    async def list_tasks(
        self, *, status: str | None = None, workflow: str | None = None,
        client_task_id: str | None = None, limit: int = 50, cursor: str | None = None,
        batch_id: str | None = None, tenant: str | None = None,
    ) -> tuple[list[TaskState], str | None]:
        rows = sorted(self._states.values(), key=lambda s: (s.created_at, s.task_id), reverse=True)
        if cursor:
            after = decode_cursor(cursor)
            rows = [s for s in rows if (s.created_at, s.task_id) < after]
        rows = [
            s
            for s in rows
            if (tenant is None or s.tenant == tenant)
            and (status is None or s.status == status)
            and (workflow is None or s.workflow == workflow)
            and (client_task_id is None or s.client_task_id == client_task_id)
            and (batch_id is None or s.batch_id == batch_id)
        ]
        page = rows[:limit]
        more = len(rows) > limit
        return [s.copy() for s in page], (
            encode_cursor(page[-1].created_at, page[-1].task_id) if more and page else None
        )

    async def open_tasks(self) -> list[TaskState]:
        return sorted(
            (s.copy() for s in self._states.values() if not s.is_final),
            key=lambda s: s.created_at,
        )

    async def queued_tasks(self) -> list[QueuedRow]:
        return [
            (s.task_id, s.priority, s.created_at.timestamp(), s.workflow, list(s.required_labels),
             s.tenant)
            for s in sorted(self._states.values(), key=lambda s: s.created_at)
            if s.status == task_state.QUEUED
        ]

    async def dispatch_tenants(self, limit: int = DISPATCH_HISTORY) -> list[str]:
        return self._dispatches[-limit:] if limit > 0 else []

    async def pending_webhooks(self) -> list[tuple[str, str | None]]:
        pending = [s for s in self._states.values() if s.webhook == task_state.WEBHOOK_PENDING]
        return [(s.task_id, s.callback_url) for s in sorted(pending, key=lambda s: s.updated_at)]

    async def ended_among(self, task_ids: Sequence[str]) -> set[str]:
        return {t for t in task_ids if t in self._states and self._states[t].is_final}

    async def listen_queued(self, callback: QueuedCallback) -> None:
        self._queued.append(callback)

    async def listen_ended(
        self, callback: EndedCallback, on_listening: Callable[[], None] | None = None,
        *, keep_states: bool = False,
    ) -> None:
        if keep_states:
            self.ended_states.keep = notices.KEEP_STATES
        self._ended.append(callback)
        if on_listening is not None:
            on_listening()

    async def append_fleet(self, event: fleet.FleetEvent) -> None:
        self._fleet.append(event)

    async def read_fleet(self) -> list[fleet.FleetEvent]:
        return list(self._fleet)

    async def wait_for_change(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        async def changed() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._streams.get(task_id, [])) > after_seq)

        try:
            await asyncio.wait_for(changed(), timeout_s)
        except TimeoutError:
            pass

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _carried(state: TaskState) -> dict[str, Any]:
    """The state as a notice carries it: through JSON, as from PostgreSQL (nothing shared)."""
    return orjson.loads(orjson.dumps(state_to_json(state)))
