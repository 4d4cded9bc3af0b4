"""POST /endpoints asks this probe first: a ComfyUI stand-in passes; PostgreSQL, a plain HTTP
server, nothing listening, link-local, metadata and the service's own port do not."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from comfy_fleet import errors
from comfy_fleet.comfy import probe
from comfy_fleet.policies import fleet_addresses
from comfy_standin.testing import run_standin

FLEET = fleet_addresses.snapshot([], service=["127.0.0.1:8000"], own=["127.0.0.1"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_standin_answers_as_a_comfyui() -> None:
    async with run_standin() as s:
        await probe.check_endpoint("127.0.0.1", s.port, FLEET)
        await probe.check_endpoint("localhost", s.port, FLEET)


@pytest.mark.postgres
async def test_postgresql_is_not_a_comfyui() -> None:
    with pytest.raises(probe.NotAComfyUI, match="does not answer as a ComfyUI"):
        await probe.check_endpoint("127.0.0.1", 5432, FLEET, timeout_s=2)


async def test_nothing_listening_and_a_plain_http_server_are_refused() -> None:
    with pytest.raises(probe.NotAComfyUI):
        await probe.check_endpoint("127.0.0.1", closed_port(), FLEET, timeout_s=1)
    app = web.Application()
    async def not_comfy(_r: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/system_stats", not_comfy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = closed_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(probe.NotAComfyUI, match="not ComfyUI's JSON"):
            await probe.check_endpoint("127.0.0.1", port, FLEET, timeout_s=1)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("host", "port"),
    [("169.254.169.254", 80), ("::ffff:169.254.169.254", 80), ("fe80::1", 8188),
     ("0.0.0.0", 8188), ("127.0.0.1", 8000), ("::1", 8000), ("64:ff9b::7f00:1", 8000)],
)
async def test_addresses_the_policy_refuses_are_refused_without_connecting(host: str, port: int) -> None:
    async def no_dns(_h: str, _p: int) -> list[str]:
        raise AssertionError("a literal address needs no lookup")

    with pytest.raises(errors.UrlForbidden):
        await probe.check_endpoint(host, port, FLEET, resolver=no_dns, timeout_s=1)


async def test_a_name_resolving_to_metadata_is_refused() -> None:
    async def dns(_h: str, _p: int) -> list[str]:
        return ["10.0.0.1", "169.254.169.254"]

    with pytest.raises(errors.UrlForbidden, match="metadata"):
        await probe.check_endpoint("comfy.example", 80, FLEET, resolver=dns, timeout_s=1)
