"""The request body limit (`MAX_BODY_BYTES`): a declared `Content-Length` over it is refused
before anything is read, and a body sent without one (chunked) is cut off at the limit."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfy_fleet.config import Settings
from serve_app import responses


class BodyTooLarge(StarletteHTTPException):
    """Raised from inside the body read: FastAPI turns any other exception there into a 400,
    but passes HTTP exceptions through to the API's handler (which answers 413)."""

    def __init__(self) -> None:
        super().__init__(413, "request body exceeds the size limit")


class BodyLimit:
    """Answers 413 `payload_too_large` in the error shape to a body over the limit."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await responses.error(
                413, "payload_too_large",
                f"request body is {length} bytes; the limit is {self.limit}",
            )(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:  # too late for an answer of our own: the connection just ends
                raise
            await responses.error(
                413, "payload_too_large", f"request body exceeds the limit of {self.limit} bytes"
            )(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value: Any = None
    for name, raw in scope.get("headers") or []:
        if name == b"content-length":
            value = raw
    if value is None or not value.isdigit():
        return None
    # More than 18 digits is over any limit: no int() of an unbounded string.
    return int(value) if len(value) <= 18 else 10**18
