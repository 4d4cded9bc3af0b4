"""Websocket registry and the ordered outgoing message stream.

Mirrors ComfyUI's ``PromptServer.sockets`` (clientId -> socket, last connect wins, and the
close of a replaced socket unregisters its successor: protocol §3.7) and its single send
queue: every frame is JSON-encoded once (Python ``json.dumps`` defaults, like aiohttp's
``send_json``) and delivered in order by one task, so the worker never waits on a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: binary event types of protocol §3.6
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


class Hub:
    """Registered sockets, their negotiated flags, and the send queue."""

    def __init__(self, paused: Callable[[], bool] = lambda: False) -> None:
        #: while it answers True (the "hang" knob) frames are held back, in order
        self._paused = paused
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self._out: asyncio.Queue[tuple[str | bytes | tuple[bytes, bytes], str | None]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.close_all()

    async def close_all(self, code: int = 1001) -> None:
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await ws.close(code=code)

    def drop_all(self) -> None:
        """Cut every socket's transport without a close handshake (a network drop)."""
        for ws in list(self.sockets.values()):
            req = getattr(ws, "_req", None)
            transport = req.transport if req is not None else None
            if transport is not None:
                transport.abort()

    # -- sending -----------------------------------------------------------------------------
    def send(self, event: str, data: Any, sid: str | None) -> None:
        """Queue a text frame for ``sid``, or for every socket when ``sid`` is None."""
        self._out.put_nowait((json.dumps({"type": event, "data": data}), sid))

    def send_image(self, image: bytes, metadata: dict[str, Any], sid: str | None) -> None:
        """Queue a preview: type 4 for sockets that negotiated metadata, else type 1 (with
        image format 1 for a JPEG, 2 for a PNG, by `metadata["image_type"]`)."""
        meta = json.dumps(metadata).encode()
        type4 = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image
        image_format = 1 if metadata.get("image_type") == "image/jpeg" else 2
        type1 = struct.pack(">II", PREVIEW_IMAGE, image_format) + image
        self._out.put_nowait(((type1, type4), sid))

    async def _pump(self) -> None:
        while True:
            payload, sid = await self._out.get()
            while self._paused():  # noqa: ASYNC110 - the hang knob is a plain attribute
                await asyncio.sleep(0.02)
            if sid is None:
                targets = list(self.sockets.items())
            else:
                ws = self.sockets.get(sid)
                targets = [(sid, ws)] if ws is not None else []
            for target_sid, ws in targets:
                try:
                    if isinstance(payload, str):
                        await ws.send_str(payload)
                    elif isinstance(payload, tuple):
                        flagged = self.flags.get(target_sid, {}).get("supports_preview_metadata")
                        # A broadcast preview is always type 1, as in the real server.
                        use4 = sid is not None and flagged is True
                        await ws.send_bytes(payload[1] if use4 else payload[0])
                    else:
                        await ws.send_bytes(payload)
                except Exception as exc:  # a closing socket must not stop the stream
                    log.debug("send to %s failed: %s", target_sid, exc)

    async def drain(self) -> None:
        """Wait until every queued frame went out (used before a restart)."""
        while not self._out.empty():  # noqa: ASYNC110 - rarely used, cheap
            await asyncio.sleep(0.001)
