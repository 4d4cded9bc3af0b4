"""A bucket served over real HTTP by a local aiohttp server: objects by key under ``/bucket/``,
plus the answers a bucket should never give (a redirect), and a gate to hold a body back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestServer


class Bucket:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        #: when set, bodies wait for it (a pull held in flight)
        self.gate: asyncio.Event | None = None
        self.requested = asyncio.Event()
        self.server: TestServer | None = None

    def put(self, data: bytes, key: str | None = None) -> str:
        """Store ``data`` under ``models/<sha256>`` (or ``key``); its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        self.objects[key or f"models/{sha}"] = data
        return sha

    @property
    def url(self) -> str:
        """What COMFY_FLEET_MODEL_BUCKET_URL names."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/bucket"

    def presigned(self, key: str) -> str:
        return f"{self.url}/{key}?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=300"

    async def _get(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.requests[key] += 1
        self.requested.set()
        if key == "redirect":
            raise web.HTTPFound(f"{self.url}/{next(iter(self.objects))}")
        if key not in self.objects:
            return web.Response(status=404)
        if self.gate is not None:
            await self.gate.wait()
        data = self.objects[key]
        if request.query.get("chunked"):  # no Content-Length: the size is known at the end
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(data), 700):
                await resp.write(data[i:i + 700])
            await resp.write_eof()
            return resp
        return web.Response(body=data, content_type="application/octet-stream")

    async def _anything(self, request: web.Request) -> web.Response:
        self.requests[request.path] += 1
        return web.Response(body=b"not the bucket")


@contextlib.asynccontextmanager
async def serve_bucket() -> AsyncIterator[Bucket]:
    bucket = Bucket()
    app = web.Application()
    app.router.add_get("/bucket/{key:.*}", bucket._get)
    app.router.add_get("/{path:.*}", bucket._anything)
    bucket.server = TestServer(app, host="127.0.0.1")
    await bucket.server.start_server()
    try:
        yield bucket
    finally:
        await bucket.server.close()
