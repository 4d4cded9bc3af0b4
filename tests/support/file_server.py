"""A file server on loopback for the service to fetch from: bytes by name (images, models,
anything a task takes by URL), every name asked for recorded in `hits`, redirects with their
Location sent exactly as written, and names answered by a body without end.

    async with file_server.serving() as server:
        server.files["cat.png"] = data
        url = f"{server.url}/cat.png"
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.ports import free_port

#: What an endless name sends: this many chunks of 1 MiB, chunked (no Content-Length), so a
#: size limit must be enforced while reading.
ENDLESS_CHUNKS = 64


@dataclass
class FileServer:
    url: str
    #: the Content-Type of every file answered
    content_type: str = "application/octet-stream"
    files: dict[str, bytes] = field(default_factory=dict)
    #: name -> Location of a 302, sent as written (a malformed one too)
    redirects: dict[str, str] = field(default_factory=dict)
    #: names answered by ENDLESS_CHUNKS MiB of zeros without a Content-Length
    endless: set[str] = field(default_factory=set)
    #: every name asked for, in order (redirected, missing and endless ones too)
    hits: list[str] = field(default_factory=list)

    def add(self, name: str, size: int = 96 * 1024) -> tuple[str, str]:
        """A new file of `size` random bytes: (its URL, its sha256)."""
        data = os.urandom(size)
        self.files[name] = data
        return f"{self.url}/{name}", hashlib.sha256(data).hexdigest()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if name in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[name]})
        if name in self.endless:
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b"\0" * (1 << 20)
            try:
                for _ in range(ENDLESS_CHUNKS):
                    await resp.write(chunk)
            except (ConnectionResetError, RuntimeError):
                pass  # the service stopped reading, as it should
            return resp
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type=self.content_type)


@contextlib.asynccontextmanager
async def serving(content_type: str = "application/octet-stream") -> AsyncIterator[FileServer]:
    """A FileServer on a free loopback port, for the length of the `async with`."""
    port = free_port()
    server = FileServer(url=f"http://127.0.0.1:{port}", content_type=content_type)
    app = web.Application()
    app.router.add_get("/{name}", server._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield server
    finally:
        await runner.cleanup()
