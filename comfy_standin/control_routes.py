"""The ``/_standin/*`` control routes, which the real server does not have: knobs, counters,
dropping the websockets and a restart, for tests and benchmarks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .server import StandIn


class ControlRoutes:
    """Handlers bound to one ``StandIn``."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin
        self._restart_task: asyncio.Task[None] | None = None

    async def control_get_knobs(self, request: web.Request) -> web.Response:
        return web.json_response(self.s.knobs.to_json())

    async def control_set_knobs(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.s.knobs.update(body)
        except (ValueError, TypeError, KeyError) as ex:
            return web.json_response({"error": f"bad knobs: {ex!r}"}, status=400)
        if self.s.rt is not None:
            self.s.rt.queue.wake()
        return web.json_response(self.s.knobs.to_json())

    async def control_counters(self, request: web.Request) -> web.Response:
        return web.json_response(self.s.counters.to_json())

    async def control_drop_websockets(self, request: web.Request) -> web.Response:
        self.s.drop_websockets()
        return web.json_response({"dropped": True})

    async def control_restart(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        down_s = float(body.get("down_s", 0.0)) if isinstance(body, dict) else 0.0

        async def later() -> None:
            await asyncio.sleep(0.05)  # let this answer go out first
            await self.s.restart(down_s)

        self._restart_task = asyncio.get_running_loop().create_task(later())
        return web.json_response({"restarting": True, "down_s": down_s})
