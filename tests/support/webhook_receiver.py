"""A webhook receiver on loopback that records every request and can go down and come back
on the same port (its listening socket closed: connections are refused, as a dead host's)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.ports import free_port


@dataclass
class WebhookCall:
    headers: dict[str, str]
    body: bytes
    json: dict[str, Any]
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id") or self.headers.get("Webhook-Id") or ""

    @property
    def task_id(self) -> str:
        return str(self.json["task"]["task_id"])


@dataclass
class WebhookReceiver:
    """``await start()``; ``url``; ``calls`` (every answered request); ``down()``/``up()``."""

    port: int = field(default_factory=free_port)
    calls: list[WebhookCall] = field(default_factory=list)
    #: status answered while up (200 unless a test says otherwise)
    status: int = 200
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        if self._site is None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    async def down(self) -> None:
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()

    async def close(self) -> None:
        await self.down()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if self._site is None:
            # Down, but a keep-alive connection from before still reached us: die like a host.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        body = await request.read()
        status = self.status
        self.calls.append(
            WebhookCall(
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                json=json.loads(body),
                status=status,
            )
        )
        return web.Response(status=status)

    def delivered(self, task_id: str) -> list[WebhookCall]:
        """The calls for `task_id` that were answered 2xx (deliveries)."""
        return [c for c in self.calls if c.status < 300 and c.task_id == task_id]
