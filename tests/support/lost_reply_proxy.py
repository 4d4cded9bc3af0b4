"""A loopback TCP proxy that can lose the answer to one request: ``arm(marker)`` makes the next
client message containing ``marker`` reach the server, then drops the server's reply and resets
the client's connection. Before PostgreSQL this is the ambiguous commit — the statement ran and
committed, the client only saw its connection die — aimed at one statement (asyncpg sends a
parameter such as an event type as plain bytes in the Bind message, so the marker can be one).
"""

from __future__ import annotations

import asyncio
import contextlib

_CHUNK = 64 * 1024


class _Conn:
    def __init__(self) -> None:
        self.drop_reply = False


class LostReplyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; run it on a loop that keeps running."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._marker: bytes | None = None
        self._armed = 0
        self.port = 0
        #: replies dropped so far
        self.dropped = 0

    async def start(self) -> LostReplyProxy:
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

    def arm(self, marker: bytes, count: int = 1) -> None:
        """Lose the reply to the next `count` client messages that contain `marker`."""
        self._marker, self._armed = marker, count

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = _Conn()
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
                self._to_server(client_r, upstream_w, conn),
                self._to_client(upstream_r, client_w, upstream_w, conn),
            )
        except asyncio.CancelledError:
            client_w.transport.abort()
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()

    async def _to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if self._armed and self._marker is not None and self._marker in data:
                    self._armed -= 1
                    conn.drop_reply = True
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await writer.drain()

    async def _to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter, conn: _Conn,
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if conn.drop_reply:
                    # The server answered (so it ran the statement): the client never hears it.
                    self.dropped += 1
                    writer.transport.abort()
                    upstream.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await writer.drain()
