"""Connections that go only where the URL policy looked: an httpx transport and an aiohttp
resolver that connect to the addresses ``UrlPolicy.resolve_and_check`` just checked, so a DNS
answer that changes between the check and the connect (rebinding) is never followed.
"""

from __future__ import annotations

import socket

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from comfy_fleet.policies import url_policy


class PinnedTransport(httpx.AsyncBaseTransport):
    """Checks each request's URL against the policy and connects only to the address it checked.

    The request keeps its ``Host`` header and, for https, its TLS server name (so certificates are
    verified against the name, not the address); only the address to connect to is pinned.
    Raises ``errors.UrlForbidden`` / ``HostUnresolvable`` from ``handle_async_request``.
    """

    def __init__(self, policy: url_policy.UrlPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        parsed = self._policy.check_url(str(request.url))
        ips = await self._policy.resolve_and_check(parsed)
        if parsed.ip is not None:
            return await self._inner.handle_async_request(request)
        original = request.url
        if parsed.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": parsed.host}
        last: httpx.ConnectError | None = None
        # Try each checked address in turn, as a resolver-following client would; a failed
        # connect has sent nothing, so moving on to the next address is safe.
        for ip in ips:
            request.url = original.copy_with(host=str(ip))
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError as exc:
                last = exc
            finally:
                request.url = original
        assert last is not None
        raise last

    async def aclose(self) -> None:
        await self._inner.aclose()


class PinnedResolver(AbstractResolver):
    """``PinnedTransport`` for aiohttp: a resolver answering with the addresses the caller just
    checked for the host (``pin``), so a connection goes only where the check went (no second
    lookup a rebinding DNS server could answer differently). A host not pinned is resolved and
    checked here. Host names and SNI stay the URL's."""

    def __init__(self, policy: url_policy.UrlPolicy) -> None:
        self._policy = policy
        self._checked: dict[tuple[str, int], list[url_policy.IPAddress]] = {}

    def pin(self, url: url_policy.ParsedUrl, ips: list[url_policy.IPAddress]) -> None:
        """Connect to ``url``'s host only at ``ips`` (from ``policy.resolve_and_check``)."""
        if url.ip is not None:
            return  # an address: aiohttp asks no resolver
        if len(self._checked) > 1024:
            self._checked.clear()  # bounded; a host no longer pinned is checked again
        self._checked[(url.host, url.port)] = ips

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ips = self._checked.get((host, port))
        if ips is None:
            # Not pinned by the caller: check now, never connect blind.
            shown = f"[{host}]" if ":" in host else host
            ips = await self._policy.resolve_and_check(f"http://{shown}:{port}/")
        return [
            ResolveResult(
                hostname=host, host=str(ip), port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
            for ip in ips
        ]

    async def close(self) -> None:
        return None
