"""Keeps a ``FleetAddresses`` current: the router's endpoints (configured, discovered and added
at run time, as GET /endpoints lists them), this machine's addresses, and what the fleet's host
names resolve to.

Every holder of a URL policy (each ingress replica, the webhook actor) runs one, so a ComfyUI
that joins the fleet is denied to callbacks and image URLs everywhere within ``period_s``, and at
once in the replica that added it (``refresh`` right after POST /endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from comfy_fleet.policies import fleet_addresses

log = logging.getLogger("comfy_fleet.fleet")

#: How often a holder re-reads the fleet; the window in which another replica's POST /endpoints
#: is not yet known here.
REFRESH_S = 1.0
#: Bound on one name's lookup: a slow DNS keeps the last answer rather than stall the refresh.
RESOLVE_TIMEOUT_S = 2.0

Source = Callable[[], Awaitable[Iterable[str]]]


def own_addresses() -> list[str]:
    """Every address of this machine's interfaces (loopback included)."""
    import psutil  # Ray's and pgserver's dependency; imported late, only holders need it

    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append(a.address.split("%", 1)[0])
    return out


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT_S):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def endpoint_names(stats: Mapping[str, Any]) -> list[str]:
    """The endpoints of a router's ``stats()`` answer (every one it routes to or drains)."""
    return list((stats.get("endpoints") or {}).keys())


class FleetRefresher:
    """Refreshes ``fleet`` from ``source`` (the router's endpoint names) now and then."""

    def __init__(
        self,
        fleet: fleet_addresses.FleetAddresses,
        source: Source,
        *,
        period_s: float = REFRESH_S,
        resolver: fleet_addresses.Resolver | None = None,
        own: Callable[[], Iterable[str]] = own_addresses,
    ) -> None:
        self.fleet = fleet
        self._source = source
        self._period_s = period_s
        self._resolver = resolver or system_resolver
        self._own = own
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> fleet_addresses.FleetSnapshot:
        """Read the source, this machine's addresses and the names once. A source that fails
        leaves the endpoints as they were (a router restarting lifts no denial)."""
        async with self._lock:  # one refresh at a time; a concurrent one waits for a fresh read
            try:
                names = list(await self._source())
            except Exception:  # noqa: BLE001 - keep the last fleet; the next period retries
                log.debug("fleet refresh: source failed", exc_info=True)
            else:
                self.fleet.replace(_valid(names))
            with contextlib.suppress(Exception):
                self.fleet.set_own(self._own())
            return await self.fleet.resolve(self._resolver)

    def start(self) -> None:
        """Refresh now and every ``period_s`` in the background, until ``stop``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - never let the loop die
                log.warning("fleet refresh failed", exc_info=True)
            await asyncio.sleep(self._period_s)


def _valid(names: Iterable[str]) -> list[str]:
    """The names that are ``host:port``; a discovery label that is not one is skipped (its
    actor still has the address; it is refused by name only)."""
    out = []
    for name in names:
        try:
            _host, port = fleet_addresses.parse_host_entry(name)
        except ValueError:
            continue
        if port is not None:
            out.append(name)
    return out
