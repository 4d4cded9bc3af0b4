"""A loopback TCP proxy in front of a ComfyUI (stand-in) that can turn its websockets into
zombies: ``mute()`` makes every websocket connection open at that moment swallow what the
server sends (the socket stays open, no close, no reset), while plain HTTP and websockets
opened later pass untouched. That is what a half-dead NAT or load balancer does to a long-lived
connection, and what the endpoint's zombie detection must notice through /queue and /history.
"""

from __future__ import annotations

import asyncio
import contextlib

_CHUNK = 64 * 1024


class _Conn:
    def __init__(self) -> None:
        self.websocket = False
        self.muted = False


class WsMuteProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``; run it on a loop that
    keeps running (see ``tests.support.background_loop``)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        #: bytes from the server that muted websockets swallowed (proof the server kept talking)
        self.swallowed = 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> WsMuteProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None

    def mute(self) -> int:
        """Silence every open websocket (server to client); returns how many were muted."""
        muted = 0
        for conn in self._conns:
            if conn.websocket and not conn.muted:
                conn.muted = True
                muted += 1
        return muted

    def websocket_count(self) -> int:
        return sum(1 for c in self._conns if c.websocket and not c.muted)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = _Conn()
        self._conns.add(conn)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self._target)
            except OSError:
                client_w.transport.abort()
                return
            self._writers.add(upstream_w)
            await asyncio.gather(
                self._pump(client_r, upstream_w, conn, upstream=True),
                self._pump(upstream_r, client_w, conn, upstream=False),
            )
        except asyncio.CancelledError:
            client_w.transport.abort()
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            self._conns.discard(conn)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        *,
        upstream: bool,
    ) -> None:
        first = True
        try:
            while data := await reader.read(_CHUNK):
                if upstream and first and data.startswith(b"GET /ws"):
                    conn.websocket = True
                first = False
                if not upstream and conn.muted:
                    self.swallowed += len(data)
                    continue
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await writer.drain()
