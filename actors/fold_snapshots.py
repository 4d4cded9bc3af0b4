"""FoldSnapshots: keeps the fold snapshot fresh while the service runs (what `make
fold-snapshot` does), so that `make rebuild` folds only the events since the last refresh.

A loop beside the router (one per service, like the autoscaler). Every `FOLD_SNAPSHOT_S`
(default 900 s; 0: never) it runs one refresh as a Ray task: the fold is CPU work (the first
refresh folds the whole log) and runs in a worker process of its own, never on an actor's event
loop. A refresh holds the appends only while it fixes its horizon (`fold_snapshot.barrier`: the
appends in flight commit, at most 1 s). One that fails is logged and tried at the next period:
the snapshot is derived from the log and never read by the service.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("comfy_fleet.fold_snapshots")

Refresh = Callable[[], Awaitable[str]]


class FoldSnapshots:
    def __init__(
        self, interval_s: float, refresh: Refresh, *, jitter: Callable[[], float] = random.random
    ) -> None:
        self.interval_s = interval_s
        self.refresh = refresh
        self.jitter = jitter
        #: refreshes done and failed since the start
        self.done = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the loop (not at all when the interval is 0). The first refresh comes one period
        after the start, not during it."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            # ±10 %: routers restarted together do not refresh in step.
            await asyncio.sleep(self.interval_s * (0.9 + 0.2 * self.jitter()))
            await self.once()

    async def once(self) -> None:
        try:
            line = await self.refresh()
        except Exception:
            self.failed += 1
            log.warning("fold snapshot refresh failed (tried again in %.0f s)", self.interval_s,
                        exc_info=True)
            return
        self.done += 1
        log.info("%s", line)


def _refresh_here(dsn: str) -> str:
    """One refresh, in this process (the Ray task's body)."""
    from comfy_fleet.cli.rebuild import describe
    from comfy_fleet.log.rebuild import refresh_fold_snapshot

    return describe(asyncio.run(refresh_fold_snapshot(dsn)), True)


def ray_refresh(dsn: str) -> Refresh:
    """A refresh that runs as a Ray task (its own worker process, no CPU reserved) on this
    node, the router's: the head, never a GPU host (it may still run elsewhere if this node
    is gone)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    task: Any = ray.remote(num_cpus=0, max_retries=0)(_refresh_here).options(
        scheduling_strategy=here
    )

    async def run() -> str:
        return str(await task.remote(dsn))

    return run
