"""Bounds on a JSON body's shape, checked on the raw bytes before anything parses them.

Parsing is where a small body turns into a lot of memory: 8 MiB of `[{},{},…]` is 1.4 million
dicts (about 200 MiB) before validation could refuse it, and nesting deep enough to exceed a
serialiser's recursion limit fails further on. So a body with more objects and arrays, more
values, or deeper nesting than any request of this API needs is refused (422
`invalid_request`, naming the bound) from counts taken on the bytes with the strings cut out,
in C-speed passes and a few copies of the body at most.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfy_fleet import errors
from serve_app import responses

#: Deepest nesting of objects and arrays in a body (the API's own bodies nest 3 deep; a
#: serialiser's limit, orjson's 255, must stay out of reach).
MAX_DEPTH = 64
#: Most objects and arrays in one body.
MAX_CONTAINERS = 20_000
#: Most values (array items and object members) in one body.
MAX_VALUES = 100_000
#: Most strings (object keys included) in one body.
MAX_STRINGS = 100_000

#: A JSON string once its escapes are gone (no repeated group: constant memory per match).
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def check(body: bytes) -> None:
    """Raise InvalidRequest when `body` would parse into more than the bounds allow.

    Counts are taken on the body with its strings emptied, so brackets and commas inside
    strings do not count. A body that is not JSON at all is left for the parser to refuse.
    """
    opens = body.count(b"{") + body.count(b"[")
    if opens <= MAX_DEPTH and body.count(b",") < MAX_VALUES:
        return  # cannot exceed any bound: nothing to strip
    # Escaped backslashes first, then escaped quotes: what is left of a string has no escape
    # that could end it early or late. Each step drops the previous copy.
    bare = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Every quote left delimits a string; bounding their number bounds the pieces `sub` makes.
    strings = bare.count(b'"') // 2
    if strings > MAX_STRINGS:
        raise _refusal(f"holds {strings} strings; the limit is {MAX_STRINGS}")
    bare = _STRING.sub(b'""', bare)
    containers = bare.count(b"{") + bare.count(b"[")
    if containers > MAX_CONTAINERS:
        raise _refusal(f"holds {containers} objects and arrays; the limit is {MAX_CONTAINERS}")
    values = bare.count(b",") + containers
    if values > MAX_VALUES:
        raise _refusal(f"holds about {values} values; the limit is {MAX_VALUES}")
    depth = deepest = 0
    # At most 2 * MAX_CONTAINERS brackets are left to walk.
    for bracket in _NOT_BRACKET.sub(b"", bare):
        if bracket in b"{[":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    if deepest > MAX_DEPTH:
        raise _refusal(f"nests objects and arrays {deepest} deep; the limit is {MAX_DEPTH}")


def _refusal(problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"the request body {problem}", {"loc": ["body"], "problem": problem}
    )


class JsonBounds:
    """Reads a request's body (already bounded in bytes by `body_limit.BodyLimit`, which must
    run before this), refuses it in the error shape if `check` does, else hands the same
    bytes on to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        try:
            check(body)
        except errors.InvalidRequest as exc:
            await responses.fleet_error(exc)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
