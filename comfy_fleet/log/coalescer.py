"""Coalescer: turn many small fire-and-forget notifications into a few batched calls.

Between actors every call costs a serialisation and a hop through Ray; at a hundred tasks a
second, batching the per-task notifications (task finished, ended) removes most of that cost.
A batch leaves at once when none is under way, else after a window of a couple of
milliseconds: no delay when the service is idle, batches when it is busy.
Items are delivered in order; a failing flush is logged and its items dropped — callers use it
only for notifications that a periodic scan of the log also covers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("comfy_fleet.coalescer")


class Coalescer(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[object]],
        *,
        window_s: float = 0.002,
        max_batch: int = 256,
    ) -> None:
        self._flush = flush
        self._window_s = window_s
        self._max_batch = max_batch
        self._items: list[T] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self._max_batch:
            self._start_flush()
        elif self._task is None:
            self._task = asyncio.create_task(self._later())

    async def _later(self) -> None:
        # Idle (no batch under way): go at the next turn of the loop, which still gathers
        # everything added in this one, so a lone notification waits for nothing. Busy: wait
        # the window, and the batch grows while the last one travels (Nagle's rule).
        await asyncio.sleep(self._window_s if self._inflight else 0)
        self._task = None
        self._start_flush()

    def _start_flush(self) -> None:
        if not self._items:
            return
        batch, self._items = self._items, []
        task = asyncio.create_task(self._send(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[T]) -> None:
        try:
            await self._flush(batch)
        except Exception:
            log.warning("a batch of %d notification(s) failed", len(batch), exc_info=True)

    async def drain(self) -> None:
        """Flush now and wait for every batch under way (tests, shutdown)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._start_flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
