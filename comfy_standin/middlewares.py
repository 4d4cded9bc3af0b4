"""The stand-in's middlewares: the ``hang`` knob (every ComfyUI route waits while it is set)
and ComfyUI's origin check for loopback hosts (``create_origin_only_middleware``)."""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from typing import Any

from aiohttp import web

from . import responses
from .knobs import Knobs


def hang(knobs: Knobs) -> Any:
    """Hold every request but the control routes while ``knobs.hang`` is set."""

    @web.middleware
    async def hang_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if knobs.hang and not request.path.startswith("/_standin/"):
            while knobs.hang:  # noqa: ASYNC110 - the knob is a plain attribute
                await asyncio.sleep(0.05)
        return await handler(request)

    return hang_middleware


@web.middleware
async def origin_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """403 for a request to a loopback host whose Origin names another host, as ComfyUI."""
    host = request.headers.get("Host")
    origin = request.headers.get("Origin")
    if host and origin:
        host_domain = host.lower()
        parsed = urllib.parse.urlparse(origin)
        origin_domain: str | None = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = _is_loopback(host_parsed.hostname)
        host_cmp: str | None = host_domain
        if parsed.port is None:
            host_cmp = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and host_cmp and origin_domain and host_cmp != origin_domain:
            return responses.empty(403)
    return await handler(request)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
