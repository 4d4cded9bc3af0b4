"""GET a URL within the policy and within size and time bounds: image inputs given by URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from comfy_fleet import errors
from comfy_fleet.policies import url_policy

#: Statuses whose ``Location`` is followed (each one checked against the policy first).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def fetch_limited(
    client: httpx.AsyncClient,
    url: str,
    policy: url_policy.UrlPolicy,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 3,
) -> tuple[bytes, str | None]:
    """GET ``url`` within bounds; return (body, content type). ``stream_limited`` tells how."""
    chunks: list[bytes] = []
    content_type = await stream_limited(
        client, url, policy, max_bytes=max_bytes, timeout_s=timeout_s,
        max_redirects=max_redirects, sink=chunks.append,
    )
    return b"".join(chunks), content_type


async def stream_limited(
    client: httpx.AsyncClient,
    url: str,
    policy: url_policy.UrlPolicy,
    *,
    max_bytes: int,
    timeout_s: float,
    sink: Callable[[bytes], object],
    max_redirects: int = 3,
) -> str | None:
    """GET ``url`` within bounds, handing each chunk of the body to ``sink``; return the
    content type.

    Redirects are followed by hand, each ``Location`` checked against the policy before it is
    requested. Raises ``errors.UrlForbidden`` (a URL or redirect the policy denies),
    ``errors.PayloadTooLarge`` (past ``max_bytes``), ``errors.InputRejected`` (timed out after
    ``timeout_s`` in total, a non-2xx status, too many redirects, a network error) and
    ``errors.InvalidRequest`` (a malformed URL). For protection against DNS rebinding ``client``
    should use ``policy.transport()``; a plain client is checked only just before each request.
    """
    parsed = policy.check_url(url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            for _hop in range(max_redirects + 1):
                await policy.resolve_and_check(parsed)
                async with client.stream(
                    "GET", parsed.url, follow_redirects=False, timeout=timeout_s
                ) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise errors.InputRejected(
                                f"{parsed.redacted} redirected without a Location"
                            )
                        parsed = policy.check_url(str(response.url.join(location)))
                        continue
                    if not 200 <= response.status_code < 300:
                        raise errors.InputRejected(
                            f"{parsed.redacted} answered HTTP {response.status_code}"
                        )
                    await _read_limited(response, max_bytes, parsed, sink)
                    return response.headers.get("content-type")
    except httpx.InvalidURL:
        # httpx parses every redirect's Location, even one it does not follow.
        raise errors.UrlForbidden(f"{parsed.redacted} redirected to a malformed URL") from None
    except (TimeoutError, httpx.TimeoutException):
        elapsed = time.monotonic() - started
        raise errors.InputRejected(
            f"fetching {parsed.redacted} timed out after {elapsed:.1f} s (limit {timeout_s} s)"
        ) from None
    except httpx.HTTPError as exc:
        raise errors.InputRejected(
            f"fetching {parsed.redacted} failed: {type(exc).__name__}"
        ) from None
    raise errors.InputRejected(
        f"{url_policy.url_redacted(url)}: more than {max_redirects} redirects"
    )


async def _read_limited(
    response: httpx.Response, max_bytes: int, url: url_policy.ParsedUrl,
    sink: Callable[[bytes], object],
) -> None:
    too_large = errors.PayloadTooLarge(f"{url.redacted} is larger than {max_bytes} bytes")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        sink(chunk)
