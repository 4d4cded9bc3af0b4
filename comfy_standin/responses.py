"""The bare answers the real server gives: an empty body with a status, and aiohttp's 500."""

from __future__ import annotations

from aiohttp import web

_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


def empty(status: int = 200) -> web.Response:
    return web.Response(status=status)


def internal_error() -> web.Response:
    """What aiohttp answers when a ComfyUI handler raises (the real server catches nothing)."""
    return web.Response(status=500, text=_INTERNAL_ERROR, content_type="text/plain")
