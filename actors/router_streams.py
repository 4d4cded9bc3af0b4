"""The router's side of the dispatch stream: each endpoint holds one streaming call open to the
router (`Router.dispatch_feed`), and the router hands it tasks by putting them on that stream
instead of calling it for each batch.

Why: on these hosts an awaited actor call costs 1.9-2.1 ms of CPU over both actors and 1.8 ms
before the callee runs; an item of a Ray stream costs 0.9-1.5 ms and arrives in 1.5 ms
(`bench.hops`, and its docs). What it promises: no more than an actor call whose answer is not
awaited. "Accepted" is not answered (the endpoint records `task.dispatched`, as ever); refused
or retry come back by `dispatch_results`. So what was put on a stream is kept here until its
task is heard of again: answered, ended or requeued (`forget`), or found by the router's scan
of the queued tasks past `grace_s`: still queued in the log, it never reached the endpoint (its
stream broke: that endpoint's stream is closed, and it is called until it opens another) and
it is handed out again; no longer queued, it did. Bookkeeping only: no I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from comfy_fleet.policies.fair_share import WaitingTask

#: Seconds after which a task put on a stream, and still queued in the log, is taken as lost.
GRACE_S = 10.0

#: (task_id, its state as the queued notice carried it, or None)
Item = tuple[str, dict[str, Any] | None]


class DispatchStreams:
    def __init__(
        self, *, grace_s: float = GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s = grace_s
        self.clock = clock
        #: each endpoint's open stream
        self.feeds: dict[str, asyncio.Queue[list[Item] | None]] = {}
        #: task_id → (endpoint, the waiting task, when it was put on the stream)
        self.sent: dict[str, tuple[str, WaitingTask, float]] = {}

    def open(self, endpoint: str) -> asyncio.Queue[list[Item] | None]:
        """A new stream to `endpoint`; an older one ends, and its batches not yet carried go
        on the new one."""
        feed: asyncio.Queue[list[Item] | None] = asyncio.Queue()
        old = self.feeds.get(endpoint)
        if old is not None:
            while not old.empty():
                batch = old.get_nowait()
                if batch is not None:
                    feed.put_nowait(batch)
            old.put_nowait(None)
        self.feeds[endpoint] = feed
        return feed

    def closed(self, endpoint: str, feed: asyncio.Queue[list[Item] | None]) -> None:
        """The stream `feed` ended (its generator returned or was dropped)."""
        if self.feeds.get(endpoint) is feed:
            del self.feeds[endpoint]

    def close(self, endpoint: str) -> None:
        """End `endpoint`'s stream (it left the fleet): its generator returns."""
        feed = self.feeds.pop(endpoint, None)
        if feed is not None:
            feed.put_nowait(None)

    def uses(self, endpoint: str) -> bool:
        return endpoint in self.feeds

    def put(self, endpoint: str, items: Sequence[WaitingTask], batch: list[Item]) -> None:
        """Hand `items` (as `batch`) to `endpoint` on its stream now."""
        now = self.clock()
        for item in items:
            self.sent[item.task_id] = (endpoint, item, now)
        self.feeds[endpoint].put_nowait(batch)

    def answered(
        self, endpoint: str, task_ids: Sequence[str], results: Sequence[str]
    ) -> tuple[list[WaitingTask], list[str]]:
        """The endpoint's answers for tasks put on its stream: the tasks and their results;
        answers for tasks not sent to it that way (late, or another's) are dropped."""
        items: list[WaitingTask] = []
        kept: list[str] = []
        for task_id, result in zip(task_ids, results, strict=True):
            sent = self.sent.get(task_id)
            if sent is None or sent[0] != endpoint:
                continue
            del self.sent[task_id]
            items.append(sent[1])
            kept.append(result)
        return items, kept

    def forget(self, task_id: str) -> None:
        """The task ended or was requeued: whatever was sent of it is settled."""
        self.sent.pop(task_id, None)

    def unheard(self, queued: Collection[str]) -> list[tuple[str, WaitingTask]]:
        """Put on a stream longer than `grace_s` ago: those still `queued` in the log never
        reached their endpoint (returned, with it, to be handed out again; its stream is ended,
        so it is called until it opens another); the rest did, and are forgotten."""
        horizon = self.clock() - self.grace_s
        lost: list[tuple[str, WaitingTask]] = []
        for task_id, (endpoint, item, at) in list(self.sent.items()):
            if at > horizon:
                continue
            del self.sent[task_id]
            if task_id in queued:
                lost.append((endpoint, item))
                self.close(endpoint)
        return lost
