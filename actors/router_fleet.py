"""The router's fleet membership: which endpoints it routes to, as configured, discovered and
added or drained at run time, and what it tells of them (`GET /endpoints`, reloads).

A mixin of `actors.router.Router`, which holds the state it works on (`handles`, `loads`,
`assigned`, the endpoint factory); apart so that the router module keeps to dispatching. Run-time
additions and removals are recorded as fleet events (`comfy_fleet/log/fleet.py`), so a restart
keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors import ports, router_streams
from comfy_fleet import errors
from comfy_fleet.log import event_log, fleet
from comfy_fleet.policies import routing

log = logging.getLogger("comfy_fleet.router")

#: Seconds between looks at the cluster in discovery mode.
DISCOVERY_S = 2.0
#: A status call slower than this marks the endpoint disconnected.
HEARTBEAT_TIMEOUT_S = 5.0


class FleetMembership:
    """The endpoints of the fleet, for the Router that mixes this in."""

    log: event_log.FleetLog
    #: creates (or finds) the endpoint actor of a ComfyUI, off the event loop
    factory: Callable[[str, list[str]], Awaitable[ports.EndpointApi]] | None
    destroy: Callable[[str], Awaitable[None]] | None
    discover: Callable[[], Awaitable[dict[str, list[str]]]] | None
    discovered: set[str]
    handles: dict[str, ports.EndpointApi]
    loads: dict[str, routing.EndpointLoad]
    assigned: dict[str, set[str]]
    streams: router_streams.DispatchStreams
    _wake: asyncio.Event

    async def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Any) -> None:
        raise NotImplementedError

    async def endpoint_statuses(self) -> list[dict[str, Any]]:
        """GET /endpoints: each endpoint's own status (asked now; `disconnected` when it does
        not answer in time), with its labels, and `draining` once it is being removed."""
        await self.start()
        names = list(self.handles)
        results = await asyncio.gather(
            *(asyncio.wait_for(self.handles[n].status(), HEARTBEAT_TIMEOUT_S) for n in names),
            return_exceptions=True,
        )
        out = []
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                res = {"endpoint": name, "state": "disconnected", "connected": False,
                       "queue_remaining": 0, "inflight": 0, "last_seen": None}
            load = self.loads.get(name)
            if load is not None:
                res["labels"] = sorted(load.labels)
                if load.draining:
                    res["state"] = "draining"
            out.append(res)
        return out

    async def reload_workflows(self) -> dict[str, Any]:
        """Tell every endpoint to re-read the workflows; returns what each can run now."""
        names = list(self.handles)
        results = await asyncio.gather(
            *(self.handles[n].reload_workflows() for n in names), return_exceptions=True
        )
        out: dict[str, Any] = {}
        for name, res in zip(names, results, strict=True):
            if not isinstance(res, BaseException):
                self.loads[name].workflows = frozenset(res) if res is not None else None
                out[name] = res
        self._wake.set()
        return out

    # --- endpoints at run time --------------------------------------------------------------

    async def _attach(self, name: str, labels: list[str]) -> None:
        assert self.factory is not None
        handle = await self.factory(name, labels)
        self.handles[name] = handle
        self.loads[name] = routing.EndpointLoad(name, labels=frozenset(labels))
        self.assigned.setdefault(name, set())
        self._wake.set()

    async def add_endpoint(self, name: str, labels: list[str] | None = None) -> dict[str, Any]:
        """POST /endpoints: record it (a restart keeps it), start its actor, route to it."""
        await self.start()
        labels = list(labels or [])
        if name in self.handles and not self.loads[name].draining:
            return {"endpoint": name, "state": "known", "labels": sorted(self.loads[name].labels)}
        if self.factory is None:
            raise errors.InvalidRequest("this router cannot start endpoints")
        await self.log.append_fleet(fleet.EndpointAdded(endpoint=name, labels=labels))
        await self._attach(name, labels)
        return {"endpoint": name, "state": "added", "labels": labels}

    async def remove_endpoint(self, name: str, *, record: bool = True) -> dict[str, Any]:
        """DELETE /endpoints/{e}: no new tasks; when nothing is in flight there, stop it."""
        await self.start()
        if name not in self.handles:
            return {"error": "endpoint_not_found", "endpoint": name}
        if record:
            await self.log.append_fleet(fleet.EndpointRemoved(endpoint=name))
        load = self.loads[name]
        if not load.draining:
            load.draining = True
            self._spawn(self._drain(name))
        return {"endpoint": name, "state": "draining", "inflight": len(self.assigned[name])}

    async def _drain(self, name: str) -> None:
        while True:
            inflight = len(self.assigned.get(name, ()))
            if inflight == 0:
                try:
                    status = await asyncio.wait_for(self.handles[name].status(), HEARTBEAT_TIMEOUT_S)
                    inflight = int(status.get("inflight") or 0)
                except Exception:
                    inflight = 0  # gone: its prompts were handed back when it was lost
            if inflight == 0 or not self.loads[name].draining:
                break
            await asyncio.sleep(0.5)
        if not self.loads[name].draining:
            return  # added again meanwhile
        if self.destroy is not None:
            with contextlib.suppress(Exception):
                await self.destroy(name)
        self.handles.pop(name, None)
        self.loads.pop(name, None)
        self.assigned.pop(name, None)
        self.discovered.discard(name)
        self.streams.close(name)  # its dispatch stream ends with it

    async def _discovery_loop(self) -> None:
        """Discovery mode: every node with the ComfyUI resource has an endpoint; a node that
        leaves takes its endpoint out of routing (its prompts are recovered as lost ones)."""
        assert self.discover is not None
        while True:
            try:
                found = await self.discover()
                for name, labels in found.items():
                    if name not in self.handles:
                        await self._attach(name, labels)
                        self.discovered.add(name)
                for name in list(self.discovered):
                    if name not in found and name in self.loads and not self.loads[name].draining:
                        await self.remove_endpoint(name, record=False)
            except Exception:
                log.warning("discovery failed", exc_info=True)
            await asyncio.sleep(DISCOVERY_S)
