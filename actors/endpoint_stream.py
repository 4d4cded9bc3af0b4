"""The endpoint's side of its dispatch stream (actors/router_streams.py): for its whole life it
holds a stream open to the router (`RouterApi.dispatch_feed`), dispatches each batch that comes
on it as a `dispatch_many` call would be, and tells the router of the answers other than
ACCEPTED (ACCEPTED is not answered). A broken or ended stream is opened again; meanwhile the
router calls `dispatch_many` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.endpoint_ends import RouterPort, Spawn, safe
from comfy_fleet.prompts.decisions import ACCEPTED, RETRY

log = logging.getLogger("comfy_fleet.endpoint")

DispatchMany = Callable[[list[str], list[Any]], Awaitable[list[str]]]
#: Seconds before opening a stream again, doubled while it keeps failing, up to the second.
REOPEN_S = (0.25, 4.0)


class DispatchStream:
    def __init__(
        self, name: str, *, router: RouterPort, spawn: Spawn, dispatch_many: DispatchMany
    ) -> None:
        self.name = name
        self.router = router
        self.spawn = spawn
        self.dispatch_many = dispatch_many

    async def run(self) -> None:
        """Hold the stream open for good (a router without one: nothing to do)."""
        feed = getattr(self.router, "dispatch_feed", None)
        if feed is None:
            return
        delay = REOPEN_S[0]
        while True:
            try:
                async for items in feed(self.name):
                    delay = REOPEN_S[0]
                    self.spawn(self._dispatch(items))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("endpoint %s: dispatch stream broke", self.name, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REOPEN_S[1])

    async def _dispatch(self, items: list[tuple[str, Any]]) -> None:
        task_ids = [task_id for task_id, _ in items]
        try:
            results = await self.dispatch_many(task_ids, [state for _, state in items])
        except Exception:
            log.exception("endpoint %s: dispatch of a streamed batch failed", self.name)
            results = [RETRY] * len(task_ids)
        other = [(t, r) for t, r in zip(task_ids, results, strict=True) if r != ACCEPTED]
        if other:
            await safe(self.router.dispatch_results(
                self.name, [t for t, _ in other], [r for _, r in other]
            ))
