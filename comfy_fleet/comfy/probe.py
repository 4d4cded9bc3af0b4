"""Is this address a ComfyUI, and may the fleet use it? Asked before POST /endpoints records one.

An endpoint is refused when any address of its host is one the URL policy never lets anything
reach (link-local, cloud metadata, unspecified, multicast, reserved, in any IPv6 wrapping) or is
the service itself (``fleet_addresses.endpoint_refusal``), and when it does not answer
``GET /system_stats`` as a ComfyUI does (200, a JSON object with a ``system`` object and a
``devices`` list) within a short time. Loopback and private addresses are fine: ComfyUIs on this
machine or its network are the usual case.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx

from comfy_fleet import errors
from comfy_fleet.policies import fleet_addresses

#: Seconds the whole probe may take (lookup, connect, answer).
PROBE_TIMEOUT_S = 3.0
#: The most of /system_stats read (a real one is about 1 KB).
MAX_ANSWER_BYTES = 256 * 1024


class NotAComfyUI(errors.InputRejected):
    """The address does not answer as a ComfyUI."""

    code = "endpoint_not_comfyui"


async def check_endpoint(
    host: str,
    port: int,
    fleet: fleet_addresses.FleetSnapshot,
    *,
    scheme: str = "http",
    resolver: fleet_addresses.Resolver | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> None:
    """Raise ``errors.UrlForbidden`` (an address the fleet must not use), ``NotAComfyUI`` (no
    ComfyUI answers there) or nothing. The probe connects only to the addresses it checked."""
    from comfy_fleet.net import fleet_refresher

    resolve = resolver or fleet_refresher.system_resolver
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            literal = fleet_addresses.literal(host)
            texts = [host] if literal is not None else list(await resolve(host, port))
    except (OSError, TimeoutError, UnicodeError):
        raise NotAComfyUI(f"{shown}: the host name does not resolve") from None
    ips = list(dict.fromkeys(ipaddress.ip_address(t.split("%", 1)[0]) for t in texts))
    if not ips:
        raise NotAComfyUI(f"{shown}: the host name does not resolve")
    for ip in ips:
        why = fleet_addresses.endpoint_refusal(ip, port, fleet)
        if why is not None:
            raise errors.UrlForbidden(f"endpoint {shown} refused: {why}")
    problem = "no answer"
    for ip in ips:
        problem = await _ask(scheme, host, ip, port, timeout_s)
        if not problem:
            return
    raise NotAComfyUI(f"{shown} does not answer as a ComfyUI ({problem})")


async def _ask(
    scheme: str, host: str, ip: fleet_addresses.IPAddress, port: int, timeout_s: float
) -> str:
    """GET /system_stats at ``ip``; "" when the answer is a ComfyUI's, else what was wrong."""
    target = f"[{ip}]" if ip.version == 6 else str(ip)
    headers = {"Host": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    try:
        async with httpx.AsyncClient(
            trust_env=False, follow_redirects=False, timeout=timeout_s
        ) as client:
            async with asyncio.timeout(timeout_s):
                request = client.build_request(
                    "GET", f"{scheme}://{target}:{port}/system_stats", headers=headers,
                    extensions=extensions,
                )
                response = await client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        return f"GET /system_stats answered HTTP {response.status_code}"
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            return "GET /system_stats answered too much"
                finally:
                    await response.aclose()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return f"not HTTP: {type(exc).__name__}"
    return "" if _looks_like_system_stats(body) else "GET /system_stats is not ComfyUI's JSON"


def _looks_like_system_stats(body: bytes) -> bool:
    import json

    try:
        data: Any = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("system"), dict)
        and isinstance(data.get("devices"), list)
    )
