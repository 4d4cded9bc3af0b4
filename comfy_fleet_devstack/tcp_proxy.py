"""A tiny asyncio TCP proxy on loopback, for making a shared service "go away" in tests.

Point a client at ``proxy.port`` instead of the real server. ``await proxy.pause()`` drops every
open connection (reset, as a crashed server would) and closes the listening socket, so new
connections are refused; ``await proxy.resume()`` listens again on the same port. The real
server (a PostgreSQL other tests share, an S3 server) never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

#: Bytes read per chunk while forwarding.
_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards connections from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self._target = (target_host, target_port)
        self._port = listen_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has not started: no port yet")
        return self._port

    @property
    def paused(self) -> bool:
        return self._server is None

    @property
    def connection_count(self) -> int:
        """Client connections being forwarded now."""
        return len(self._tasks)

    async def start(self) -> TcpProxy:
        """Listen (on a free port the first time, on the same port afterwards)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
            self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def pause(self) -> None:
        """Refuse new connections and reset every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            # abort() sends RST: the client sees the connection die at once, as with a crash.
            # It also ends our pumps (their readers see EOF), so the handlers finish by themselves.
            writer.transport.abort()
        tasks = list(self._tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for task in stuck:  # e.g. still connecting to the target
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if server is not None:
            await server.wait_closed()

    async def resume(self) -> None:
        """Accept connections again, on the same port."""
        await self.start()

    async def close(self) -> None:
        await self.pause()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self._target)
            except OSError:
                client_w.transport.abort()  # the target is down: so are we
                return
            self._writers.add(upstream_w)
            await asyncio.gather(_pump(client_r, upstream_w), _pump(upstream_r, client_w))
        except asyncio.CancelledError:
            # Cancelled by pause(): this is the top of the handler's own task, and asyncio's
            # stream server logs a cancelled handler as an error, so end quietly instead.
            client_w.transport.abort()
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close so the other side sees the EOF too."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        # One side reset: drop the other one too.
        writer.transport.abort()
    with contextlib.suppress(Exception):
        await writer.drain()
