"""The task stream's `event: queue` lines (CONTRACT §7.6): the task's queue position and ETA once
on connect and whenever its position changes. The router is asked every `POLL_S` only while the
task waits (queued, or dispatched and not started); once it runs, one more line says position 0,
and nothing more is asked. Never recorded in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import orjson

from comfy_fleet import views
from comfy_fleet.log import events, task_state
from serve_app.services import Services

log = logging.getLogger("comfy_fleet.ingress")

#: Seconds between the router's answers while the task waits.
POLL_S = 1.0

#: The phase each event type brings the task to (others change nothing of it).
_PHASES = {
    "task.submitted": task_state.QUEUED,
    "task.requeued": task_state.QUEUED,
    "task.dispatched": task_state.DISPATCHED,
    "task.started": task_state.RUNNING,
    # the first progress of a prompt may come before (or without) its start
    "task.progressed": task_state.RUNNING,
}
ENDED = "ended"


def phase_after(types: Iterable[str], phase: str = task_state.QUEUED) -> str:
    """The task's phase after events of these types, from `phase`."""
    for t in types:
        if phase == ENDED or t in events.FINAL_TYPES:
            return ENDED
        phase = _PHASES.get(t, phase)
    return phase


def queue_line(place: dict[str, Any]) -> bytes:
    """One `event: queue` frame (no `id:`: it is not an event of the task)."""
    return b"event: queue\ndata: " + orjson.dumps(views.queue_view(place)) + b"\n\n"


class QueueFeed:
    """What the stream of one task sends of its place in the queue."""

    def __init__(self, s: Services, task_id: str, history: Iterable[str]) -> None:
        self.s = s
        self.task_id = task_id
        self.phase = phase_after(history)
        #: the position last sent (None: nothing sent yet)
        self.sent: int | None = None
        self._asked_at: float | None = None
        self._asked_phase: str | None = None

    def observe(self, types: Iterable[str]) -> None:
        self.phase = phase_after(types, self.phase)

    @property
    def polling(self) -> bool:
        """The router is asked again after a while (the task waits)."""
        return self.phase in (task_state.QUEUED, task_state.DISPATCHED)

    async def line(self) -> bytes | None:
        """A frame to send now, if the position changed (or none was sent yet); asks the router
        at most every POLL_S while the task waits, and once more when its phase changes."""
        if self.phase == ENDED:
            return None
        now = time.monotonic()
        due = (
            self._asked_phase != self.phase
            or (self.polling and (self._asked_at is None or now - self._asked_at >= POLL_S))
        )
        if not due:
            return None
        self._asked_at, self._asked_phase = now, self.phase
        running = [self.task_id] if self.phase == task_state.RUNNING else None
        try:
            place = (await self.s.router.queue_info([self.task_id], running)).get(self.task_id)
        except Exception:
            log.debug("queue_info failed; no queue line", exc_info=True)
            return None
        if place is None or place.get("position") == self.sent:
            return None
        self.sent = int(place["position"])
        return queue_line(place)

    async def during(self, wait: Awaitable[None]) -> AsyncIterator[bytes]:
        """The queue lines that come until `wait` (the stream's wait for the log) is done,
        asking the router every POLL_S meanwhile (the log is not read again for it)."""
        waiting = asyncio.ensure_future(wait)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=POLL_S)
                if done:
                    return
                if (line := await self.line()) is not None:
                    yield line
        finally:
            if not waiting.done():
                waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting
