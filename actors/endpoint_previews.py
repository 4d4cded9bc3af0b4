"""PreviewHolder: the latest preview of each prompt running on one ComfyUI, for whoever watches.

ComfyUI sends a preview per sampler step (protocol §3.6). They are not facts about a task, so
they never reach the log: the endpoint keeps only the latest image of each task it holds, with
a version that changes at each new one, and a stream that asked for previews long-polls it
(`next`). Memory is one image per task in flight here, each at most PREVIEW_MAX_BYTES; a task's
image is dropped when its prompt ends (and any waiter woken), or when the endpoint no longer
holds it. Nothing is kept for a watcher: a watcher that leaves costs nothing but its pending
wait, which ends within its timeout.

No Ray and no I/O: asyncio events only, so its tests need neither.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Larger preview frames are not kept (SaveImageWebsocket streams full-size PNGs as previews;
#: a latent preview is at most 512 pixels a side, tens of KB).
PREVIEW_MAX_BYTES = 4 * 1024 * 1024
#: The longest a watcher's call waits for the next preview.
PREVIEW_WAIT_MAX_S = 30.0


@dataclass(frozen=True)
class Preview:
    #: changes with every new preview of this endpoint (unique within the actor's life)
    version: int
    content_type: str
    data: bytes = field(repr=False)

    def answer(self) -> dict[str, object]:
        """What `EndpointApi.preview` answers."""
        return {"version": self.version, "content_type": self.content_type, "data": self.data}


class PreviewHolder:
    def __init__(self) -> None:
        self._latest: dict[str, Preview] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._version = 0

    def __len__(self) -> int:
        return len(self._latest)

    def latest(self, task_id: str) -> Preview | None:
        return self._latest.get(task_id)

    def put(self, task_id: str, content_type: str, data: bytes) -> None:
        """A new preview of this task: it replaces the last one; its watchers are woken."""
        if len(data) > PREVIEW_MAX_BYTES:
            return
        self._version += 1
        self._latest[task_id] = Preview(self._version, content_type, data)
        self._wake(task_id)

    def drop(self, task_id: str) -> None:
        """The task's prompt ended here (or is no longer ours): forget its image, wake its
        watchers (they get nothing and look at the task again)."""
        self._latest.pop(task_id, None)
        self._wake(task_id)

    def keep_only(self, task_ids: Iterable[str]) -> None:
        """Drop the image of every task not among `task_ids` (those this endpoint holds)."""
        keep = set(task_ids)
        for task_id in [t for t in self._latest if t not in keep]:
            self.drop(task_id)

    async def next(
        self, task_id: str, after_version: int, timeout_s: float, held: Callable[[], bool]
    ) -> Preview | None:
        """The task's latest preview if its version is not `after_version` (at once, or as
        soon as one comes within `timeout_s`); None when none comes, when the task's prompt
        ends meanwhile, or at once when `held()` says the task is not in flight here.
        "Not" rather than "after": a restarted actor counts from 0 again."""
        latest = self._latest.get(task_id)
        if latest is not None and latest.version != after_version:
            return latest
        if not held():
            self.drop(task_id)
            return None
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, min(timeout_s, PREVIEW_WAIT_MAX_S)))
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]
        latest = self._latest.get(task_id)
        return latest if latest is not None and latest.version != after_version else None

    def watchers(self) -> int:
        """Calls waiting now (tests check that none is left behind)."""
        return sum(len(w) for w in self._waiters.values())

    def _wake(self, task_id: str) -> None:
        for event in self._waiters.get(task_id, ()):
            event.set()
