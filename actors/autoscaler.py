"""The autoscaling loop beside the router (AUTOSCALE=true): what the router cannot place becomes
a resource request to Ray's autoscaler, and idle discovered endpoints are let go so their
nodes can be removed. The decisions are comfy_fleet.policies.autoscale's; this module only
reads the router's stats, calls `ray.autoscaler.sdk.request_resources` and tells the router.

It runs in the router actor's event loop (started by actors/remote.py's build_router) and
sits between discovery and the router: the router's discovery loop attaches what `visible`
returns, so a retired endpoint is not attached again while it is retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from actors import metrics
from comfy_fleet.config import Settings
from comfy_fleet.policies import autoscale

log = logging.getLogger("comfy_fleet.autoscaler")

#: Seconds between two looks at the router.
TICK_S = 1.0
#: The resource a GPU host advertises (ray_cluster.yaml, comfy_fleet/policies/placement.py).
RESOURCE = "comfyui"


class RouterView(Protocol):
    async def stats(self) -> dict[str, Any]: ...
    async def remove_endpoint(self, name: str, *, record: bool = True) -> dict[str, Any]: ...


def request_hosts(n: int) -> None:
    """Ask Ray's autoscaler for `n` GPU hosts in all (0: withdraw the request). A request
    replaces the previous one; Ray sizes the cluster to fit it next to what runs."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{RESOURCE: 1}] * n)


def config_of(settings: Settings) -> autoscale.Config:
    return autoscale.Config(
        max_hosts=settings.autoscale_max_hosts,
        min_hosts=settings.autoscale_min_hosts,
        window_s=settings.autoscale_window_s,
        per_host=settings.endpoint_queue_depth,
        release_grace_s=settings.autoscale_release_grace_s,
    )


class Autoscaler:
    def __init__(
        self, settings: Settings, *, request: Callable[[int], None] = request_hosts,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config_of(settings)
        self.request = request
        self.clock = clock
        self.state = autoscale.State()
        #: what discovery found last (name → labels), retired ones included
        self.found: dict[str, list[str]] = {}
        self.published: int | None = None
        self.router: RouterView | None = None
        self._task: asyncio.Task[None] | None = None

    def visible(self, found: dict[str, list[str]]) -> dict[str, list[str]]:
        """The discovery filter: remembers what the cluster offers, returns it less the
        retired endpoints."""
        self.found = dict(found)
        return autoscale.visible(found, self.state)

    def start(self, router: RouterView) -> None:
        self.router = router
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.warning("autoscaling tick failed", exc_info=True)
            await asyncio.sleep(TICK_S)

    async def tick(self) -> autoscale.Decision:
        assert self.router is not None
        stats = await self.router.stats()
        endpoints = {
            name: autoscale.Endpoint(
                connected=bool(e.get("connected")), draining=bool(e.get("draining")),
                inflight=int(e.get("inflight") or 0), foreign=int(e.get("foreign_queue") or 0),
            )
            for name, e in stats["endpoints"].items()
        }
        self.state, decision = autoscale.step(
            self.state, self.config, now=self.clock(), waiting=int(stats["waiting"]),
            endpoints=endpoints, discovered=set(self.found),
        )
        if decision.request != self.published:
            log.info("requesting %d GPU host(s) (%d task(s) unplaced)", decision.request, decision.unplaced)
            await asyncio.get_running_loop().run_in_executor(None, self.request, decision.request)
            self.published = decision.request
        for name in decision.retire:
            log.info("letting %s go: drained, then its node is idle for the autoscaler", name)
            with contextlib.suppress(Exception):
                await self.router.remove_endpoint(name, record=False)
        if decision.restore:
            log.info("taking back %s", ", ".join(decision.restore))
        metrics.autoscale(
            requested_hosts=decision.request, unplaced=decision.unplaced, retired=len(self.state.retired),
        )
        return decision
