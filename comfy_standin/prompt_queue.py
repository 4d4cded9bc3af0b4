"""The prompt queue and history, as ComfyUI's ``PromptQueue`` keeps them (pure, no I/O).

Items are ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` kept in a min-heap
ordered by ``(number, prompt_id)``. ``on_change`` is called wherever the real server calls
``queue_updated()`` (put, get, task_done, wipe, each delete), so ``status`` frames carry the
real ``queue_remaining``.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

QueueItem = list[Any]


class _Entry:
    """Heap entry: compares like the real tuple on (number, prompt_id), never on the prompt."""

    __slots__ = ("item", "key", "seq")

    def __init__(self, item: QueueItem, seq: int) -> None:
        self.item = item
        self.key = (item[0], item[1], seq)
        self.seq = seq

    def __lt__(self, other: _Entry) -> bool:
        return self.key < other.key


class PromptQueue:
    """Pending heap, the running item, and the completed history."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._heap: list[_Entry] = []
        self._seq = 0
        self.running: dict[int, QueueItem] = {}
        self._task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self._wakeup = asyncio.Event()

    # -- queue ---------------------------------------------------------------------------------
    def put(self, item: QueueItem) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Entry(item, self._seq))
        self._wakeup.set()
        self._on_change()

    def queue_remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def has_pending(self) -> bool:
        return bool(self._heap)

    async def wait_pending(self) -> None:
        while not self._heap:
            self._wakeup.clear()
            await self._wakeup.wait()

    def wake(self) -> None:
        self._wakeup.set()

    def get(self) -> tuple[QueueItem, int] | None:
        if not self._heap:
            return None
        item = heapq.heappop(self._heap).item
        task_id = self._task_counter
        self.running[task_id] = item
        self._task_counter += 1
        self._on_change()
        return item, task_id

    def task_done(
        self, task_id: int, outputs: dict[str, Any], meta: dict[str, Any], status: dict[str, Any]
    ) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        extra = {k: v for k, v in item[3].items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
        stored = [item[0], item[1], item[2], extra, item[4]]
        self.history[item[1]] = {
            "prompt": stored,
            "outputs": outputs,
            "status": status,
            "meta": meta,
        }
        self._on_change()

    def get_current_queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """``(running, pending)``; pending is the raw heap array, as the real server sends."""
        return list(self.running.values()), [e.item for e in self._heap]

    def wipe(self) -> None:
        self._heap = []
        self._on_change()

    def delete(self, prompt_id: str) -> bool:
        """Remove the first pending item with this id (heap order), as the real server does."""
        for i, entry in enumerate(self._heap):
            if entry.item[1] == prompt_id:
                self._heap.pop(i)
                heapq.heapify(self._heap)
                self._on_change()
                return True
        return False

    # -- history -------------------------------------------------------------------------------
    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {prompt_id: entry} if entry is not None else {}
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def wipe_history(self) -> None:
        self.history = {}

    def delete_history(self, prompt_id: str) -> None:
        self.history.pop(prompt_id, None)
