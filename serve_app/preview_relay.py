"""PreviewRelay: a task stream's `event: preview` lines, while that stream asked for them.

ComfyUI's latent previews live only in the endpoint actor that runs the task (the latest one,
`actors/endpoint_previews.py`); they are never logged. A stream opened with `?previews=true`
starts one relay: a loop that long-polls that actor (`EndpointApi.preview`) while the task is
dispatched or running, and hands the stream the newest preview not yet sent (older ones are
skipped: a slow client sees fewer, never stale ones). Nothing runs for a stream without the
flag, and `close()` (the stream's end, or its client gone) stops the loop; an actor call in
flight then ends on its own within POLL_S.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from actors import ports
from comfy_fleet.log import task_state
from comfy_fleet.log.event_log import EventLog

log = logging.getLogger("comfy_fleet.ingress")

#: How long one call to the endpoint waits for the next preview.
POLL_S = 5.0
#: The least time between two calls that found nothing at once (the task not in flight
#: there yet, or the endpoint away): the relay then waits for the task to change.
IDLE_S = 0.5

EndpointPorts = Callable[[str], ports.EndpointApi]


def sse(preview: dict[str, Any]) -> bytes:
    """One `event: preview` line (no `id:`: a preview is not an event of the task)."""
    data = orjson.dumps({
        "content_type": preview["content_type"],
        "data": base64.b64encode(preview["data"]).decode(),
    }).decode()
    return f"event: preview\ndata: {data}\n\n".encode()


class PreviewRelay:
    def __init__(self, log_: EventLog, task_id: str, endpoints: EndpointPorts) -> None:
        self.log = log_
        self.task_id = task_id
        self.endpoints = endpoints
        self._latest: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop

    def task_changed(self) -> None:
        """The stream saw new events: where the task runs may have changed."""
        self._changed.set()

    async def during(self, wait: Awaitable[None]) -> AsyncIterator[bytes]:
        """The preview lines that come until `wait` (the stream's wait for the log) is done."""
        waiting = asyncio.ensure_future(wait)
        try:
            while not waiting.done():
                ready = asyncio.ensure_future(self._ready.wait())
                await asyncio.wait({waiting, ready}, return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if self._ready.is_set():
                    self._ready.clear()
                    if self._latest is not None:
                        yield sse(self._latest)
                        self._latest = None
        finally:
            if not waiting.done():
                waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting

    async def _follow(self) -> None:
        """Long-poll the endpoint that runs the task, while it runs; end with the task."""
        version, endpoint, port, state = 0, None, None, None
        loop = asyncio.get_running_loop()
        while True:
            if state is None or self._changed.is_set():
                # read the task only when it changed (or nothing came): not once per preview
                self._changed.clear()
                state = await self.log.get(self.task_id)
            if state.is_final:
                return
            if state.status not in (task_state.DISPATCHED, task_state.RUNNING) or not state.endpoint:
                await self._wait_changed(None)
                state = None
                continue
            if state.endpoint != endpoint:
                endpoint, port, version = state.endpoint, self.endpoints(state.endpoint), 0
            asked = loop.time()
            try:
                answer = await port.preview(self.task_id, version, POLL_S)  # type: ignore[union-attr]
            except Exception:  # the actor is away (restarting, removed): look again later
                log.debug("preview of %s from %s failed", self.task_id, endpoint, exc_info=True)
                answer, port, endpoint = None, None, None
            if answer is None:
                state = None
                if loop.time() - asked < IDLE_S:
                    await self._wait_changed(IDLE_S)
                continue
            version = int(answer["version"])
            self._latest = answer
            self._ready.set()

    async def _wait_changed(self, timeout_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
