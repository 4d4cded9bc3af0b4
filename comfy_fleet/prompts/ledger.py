"""TaskLedger: the endpoint's way to the log: cached task states, decisions appended through
conflicts, and a database outage held through (bounded) rather than dropped."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.log.event_log import EventLog
from comfy_fleet.log.task_state import TaskState

T = TypeVar("T")

#: Attempts to append one decision through conflicts before giving up.
APPEND_RETRIES = 8
#: How long events are held in memory while PostgreSQL is away before we give up.
DB_OUTAGE_BUDGET_S = 600.0

Decide = Callable[[TaskState], list[events.Event]]


async def hold_through_outage(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call the log, holding on through a database outage (bounded), never dropping."""
    deadline = time.monotonic() + DB_OUTAGE_BUDGET_S
    delay = 0.2
    while True:
        try:
            return await fn(*args)
        except errors.DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)


class TaskLedger:
    """The states of the tasks an endpoint holds, as of its last read or append."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.states: dict[str, TaskState] = {}

    async def open_tasks(self) -> list[TaskState]:
        return list(await hold_through_outage(self.log.open_tasks))

    def remember(self, state: TaskState) -> None:
        self.states[state.task_id] = state

    def forget(self, task_id: str) -> TaskState | None:
        """Drop the cached state (a newer one may be in the log); returns what was cached."""
        return self.states.pop(task_id, None)

    async def state(self, task_id: str) -> TaskState:
        state = self.states.get(task_id)
        if state is None:
            state = await hold_through_outage(self.log.get, task_id)
            self.states[task_id] = state
        return state

    async def read(self, task_id: str) -> TaskState | None:
        """The task's state in the log now, neither cached nor from the cache (it need not be
        one we hold); None when the log has no such task."""
        try:
            return await self.log.get(task_id)
        except errors.TaskNotFound:
            return None

    async def decide(self, task_id: str, decide: Decide) -> tuple[TaskState, list[events.Event]]:
        """Append what `decide(state)` returns, re-deciding on a concurrent writer's conflict.
        Returns the state after the append (or the one decided on) and what was appended."""
        for _ in range(APPEND_RETRIES):
            state = await self.state(task_id)
            new = decide(state)
            if not new:
                return state, []
            try:
                state = await hold_through_outage(self.log.append, task_id, state.seq, new, state)
            except errors.ConcurrencyConflict:
                self.states.pop(task_id, None)
                continue
            self.states[task_id] = state
            return state, new
        raise errors.ConcurrencyConflict(f"task {task_id}: gave up after {APPEND_RETRIES} conflicts")
