"""fetch_limited against a real HTTP server on 127.0.0.1: sizes, times, redirects, the policy."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from comfy_fleet import errors

from comfy_fleet.net import fetch as fetch_module
from comfy_fleet.policies import url_policy

PNG_BYTES = hashlib.sha256(b"seed").digest() * 64  # 2 KiB of made-up image bytes
CHUNK = b"z" * 65536


@dataclass
class Origin:
    base: str
    port: int
    paths: list[str] = field(default_factory=list)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    release = asyncio.Event()
    paths: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        paths.append(request.path_qs)
        return await handler(request)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG_BYTES, content_type="image/png")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1_000_000, content_type="image/png")

    async def chunked(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the limit must be enforced while streaming.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(20):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        try:
            while not release.is_set():
                await response.write(b"x")
                try:
                    await asyncio.wait_for(release.wait(), 0.05)
                except TimeoutError:
                    pass
        except (ConnectionError, RuntimeError):
            pass  # the client gave up, as it should
        return response

    async def hang(request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(release.wait(), 30)
        except TimeoutError:
            pass
        return web.Response(body=b"late")

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/hop/{n - 1}" if n > 0 else "/image.png?from=hop")

    async def redirect_to(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(request.query["to"])

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    app = web.Application(middlewares=[record])
    app.router.add_get("/image.png", image)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/drip", drip)
    app.router.add_get("/hang", hang)
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/redirect", redirect_to)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Origin(base=f"http://127.0.0.1:{port}", port=port, paths=paths)
    finally:
        release.set()
        await runner.cleanup()


POLICY = url_policy.UrlPolicy()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=POLICY.transport(), trust_env=False) as c:
        yield c


async def fetch(client: httpx.AsyncClient, url: str, **kwargs: object) -> tuple[bytes, str | None]:
    options: dict = {"max_bytes": 100_000, "timeout_s": 5.0, **kwargs}
    return await fetch_module.fetch_limited(client, url, POLICY, **options)


async def test_fetches_body_and_content_type(origin: Origin, client: httpx.AsyncClient) -> None:
    body, content_type = await fetch(client, f"{origin.base}/image.png")
    assert body == PNG_BYTES
    assert content_type == "image/png"


async def test_fetches_through_a_host_name(origin: Origin, client: httpx.AsyncClient) -> None:
    body, _ = await fetch(client, f"http://localhost:{origin.port}/image.png")
    assert body == PNG_BYTES


async def test_follows_redirects_within_the_limit(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    body, _ = await fetch(client, f"{origin.base}/hop/2", max_redirects=3)
    assert body == PNG_BYTES
    assert origin.paths == ["/hop/2", "/hop/1", "/hop/0", "/image.png?from=hop"]


async def test_refuses_a_redirect_chain_too_long(origin: Origin, client: httpx.AsyncClient) -> None:
    with pytest.raises(errors.InputRejected, match="more than 3 redirects"):
        await fetch(client, f"{origin.base}/hop/3", max_redirects=3)
    assert "/image.png?from=hop" not in origin.paths


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://2130706433/",
        "file:///etc/passwd",
    ],
)
async def test_refuses_a_redirect_to_a_forbidden_address(
    origin: Origin, client: httpx.AsyncClient, target: str
) -> None:
    with pytest.raises(errors.UrlForbidden):
        await fetch(client, f"{origin.base}/redirect?to={target}")
    assert len(origin.paths) == 1


async def test_refuses_a_redirect_to_a_denied_host(origin: Origin) -> None:
    policy = url_policy.UrlPolicy.build(deny_hosts=["127.0.0.1:8188"])
    async with httpx.AsyncClient(transport=policy.transport(), trust_env=False) as c:
        with pytest.raises(errors.UrlForbidden, match="8188"):
            await fetch_module.fetch_limited(
                c,
                f"{origin.base}/redirect?to=http://localhost:8188/view",
                policy,
                max_bytes=1000,
                timeout_s=5,
            )


async def test_refuses_a_forbidden_url_without_a_request(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    with pytest.raises(errors.UrlForbidden):
        await fetch(client, "http://169.254.169.254/")
    strict = url_policy.UrlPolicy(deny_private=True)
    with pytest.raises(errors.UrlForbidden):
        await fetch_module.fetch_limited(
            client, f"{origin.base}/image.png", strict, max_bytes=1000, timeout_s=5
        )
    assert origin.paths == []


async def test_declared_size_over_the_limit(origin: Origin, client: httpx.AsyncClient) -> None:
    with pytest.raises(errors.PayloadTooLarge, match="100000 bytes") as info:
        await fetch(client, f"{origin.base}/big")
    assert info.value.status == 413


async def test_streamed_size_over_the_limit(origin: Origin, client: httpx.AsyncClient) -> None:
    with pytest.raises(errors.PayloadTooLarge):
        await fetch(client, f"{origin.base}/chunked", max_bytes=len(CHUNK) * 3)
    body, _ = await fetch(client, f"{origin.base}/chunked", max_bytes=len(CHUNK) * 20)
    assert len(body) == len(CHUNK) * 20


async def test_a_body_that_drips_runs_out_of_time(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    with pytest.raises(errors.InputRejected, match="timed out"):
        await fetch(client, f"{origin.base}/drip?sig=s3cr3t", timeout_s=0.5)


async def test_a_server_that_hangs_runs_out_of_time(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    with pytest.raises(errors.InputRejected, match="timed out") as info:
        await fetch(client, f"{origin.base}/hang?sig=s3cr3t", timeout_s=0.5)
    assert "s3cr3t" not in info.value.message


@pytest.mark.parametrize("code", [404, 500, 204])
async def test_status_codes(origin: Origin, client: httpx.AsyncClient, code: int) -> None:
    if code == 204:
        body, _ = await fetch(client, f"{origin.base}/status/{code}")
        assert body == b""
        return
    with pytest.raises(errors.InputRejected, match=f"HTTP {code}"):
        await fetch(client, f"{origin.base}/status/{code}")
