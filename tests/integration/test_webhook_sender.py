"""WebhookSender against real HTTP receivers on 127.0.0.1 (aiohttp), through real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from comfy_fleet.policies import url_policy

from comfy_fleet.delivery import webhooks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = webhooks.parse_secret(SECRET)


@dataclass
class Receiver:
    base: str
    port: int
    #: (path, headers, body) of every request that reached the server
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    #: set when the first request arrives
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: the client address (host, port) each request to /chatty or /huge came from
    peers: list[object] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    release = asyncio.Event()
    hits: list[tuple[str, dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def record(request: web.Request) -> None:
        hits.append((request.path, dict(request.headers), await request.read()))
        arrived.set()

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=204)

    async def fail(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text="receiver exploded")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        # Held until the test ends (or 30 s), so the sender's own timeout decides.
        try:
            await asyncio.wait_for(release.wait(), 30)
        except TimeoutError:
            pass
        return web.Response(status=200)

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/ok")

    async def chatty(request: web.Request) -> web.StreamResponse:
        await record(request)
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        answer = b'{"received": true}'
        response = web.StreamResponse(status=200)
        response.content_length = len(answer)
        await response.prepare(request)
        # The body after the headers, as servers that flush their headers first send it: the
        # sender has the status before the body has come.
        await asyncio.sleep(0.05)
        await response.write(answer)
        await response.write_eof()
        return response

    async def huge(request: web.Request) -> web.Response:
        await record(request)
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(status=200, body=b"x" * (4 << 20))  # far more than a socket buffers

    peers: list[object] = []
    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/chatty", chatty)
    app.router.add_post("/huge", huge)
    app.router.add_post("/fail", fail)
    app.router.add_post("/slow", slow)
    app.router.add_post("/redirect", redirect)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Receiver(f"http://127.0.0.1:{port}", port, hits, arrived, peers)
    finally:
        release.set()
        await runner.cleanup()


def _message(task_id: str = "3b0c4f9e-0000-4000-8000-000000000001") -> tuple[bytes, dict[str, str]]:
    body = b'{"type":"task.succeeded","task":{"task_id":"%s"}}' % task_id.encode()
    headers = webhooks.build_headers(webhooks.webhook_id(task_id, 6), int(time.time()), body, KEY)
    return body, headers


async def test_2xx_is_delivered_with_verifiable_headers(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send(f"{receiver.base}/ok", body, headers)
    assert attempt.ok and attempt.status_code == 204 and attempt.error is None
    assert not attempt.final
    assert attempt.duration_s >= 0
    ((path, got_headers, got_body),) = receiver.hits
    assert path == "/ok"
    assert got_body == body
    assert got_headers["Content-Type"] == "application/json"
    assert got_headers["User-Agent"] == "comfy-fleet"
    assert webhooks.verify(KEY, got_headers, got_body)
    swh = pytest.importorskip("standardwebhooks")
    assert swh.Webhook(SECRET).verify(got_body, got_headers)["type"] == "task.succeeded"


async def test_a_short_answer_is_read_and_its_connection_kept_a_long_one_is_not(
    receiver: Receiver,
) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        for _ in range(3):
            attempt = await sender.send(f"{receiver.base}/chatty", body, headers)
            assert attempt.ok and attempt.status_code == 200
        assert len(receiver.peers) == 3 and len(set(receiver.peers)) == 1  # one connection
        receiver.peers.clear()
        for _ in range(2):
            attempt = await sender.send(f"{receiver.base}/huge", body, headers)
            assert attempt.ok and attempt.status_code == 200
        # Left unread, so never reused: each try on a connection of its own.
        assert len(receiver.peers) == 2 and len(set(receiver.peers)) == 2


async def test_500_is_retried_and_the_error_keeps_the_query_out(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send(f"{receiver.base}/fail?token=s3cr3t", body, headers)
    assert not attempt.ok and not attempt.final
    assert attempt.status_code == 500
    assert attempt.error == "http_status: 500"
    assert webhooks.classify(attempt.status_code, None) == "retry"
    assert len(receiver.hits) == 1


async def test_timeout_is_retried(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy(), timeout_s=0.3) as sender:
        attempt = await sender.send(f"{receiver.base}/slow?token=s3cr3t", body, headers)
    assert not attempt.ok and not attempt.final
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("timeout")
    assert "s3cr3t" not in attempt.error


async def test_connection_refused_is_retried() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send(f"http://127.0.0.1:{port}/ok", body, headers)
    assert not attempt.ok and not attempt.final
    assert attempt.status_code is None
    assert attempt.error == "connect_error: could not connect"


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send(f"{receiver.base}/redirect", body, headers)
    assert not attempt.ok and not attempt.final
    assert attempt.status_code == 302
    assert [hit[0] for hit in receiver.hits] == ["/redirect"]


async def test_forbidden_urls_are_final_and_never_connect(receiver: Receiver) -> None:
    body, headers = _message()
    policy = url_policy.UrlPolicy.build(deny_hosts=[f"127.0.0.1:{receiver.port}"])
    async with webhooks.WebhookSender(policy) as sender:
        for url in [
            f"{receiver.base}/ok",
            f"http://localhost:{receiver.port}/ok",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "ftp://127.0.0.1/",
            "http://user:pa55word@127.0.0.1:9/",
        ]:
            attempt = await sender.send(url, body, headers)
            assert attempt.final and not attempt.ok, url
            assert attempt.error is not None and attempt.error.startswith("url_forbidden:")
            assert "pa55word" not in attempt.error
    assert receiver.hits == []


async def test_host_names_resolve_and_connect_to_the_checked_address(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send(f"http://localhost:{receiver.port}/ok", body, headers)
    assert attempt.ok
    ((_, got_headers, _),) = receiver.hits
    assert got_headers["Host"] == f"localhost:{receiver.port}"


async def test_unresolvable_host_is_retried() -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy()) as sender:
        attempt = await sender.send("http://no-such-host.invalid/hook", body, headers)
    assert not attempt.ok and not attempt.final
    assert attempt.error is not None and attempt.error.startswith("dns_error")


async def test_a_slow_receiver_does_not_hold_up_another(receiver: Receiver) -> None:
    body, headers = _message()
    async with webhooks.WebhookSender(url_policy.UrlPolicy(), timeout_s=5) as sender:
        slow = asyncio.create_task(sender.send(f"{receiver.base}/slow", body, headers))
        await receiver.arrived.wait()  # the slow try is in flight
        fast = await sender.send(f"{receiver.base}/ok", body, headers)
        assert fast.ok
        assert not slow.done()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow


async def test_the_connection_goes_to_the_address_the_policy_checked(receiver: Receiver) -> None:
    """No second lookup: a name only the policy's resolver knows is reached at the address it
    checked, with the name kept in the Host header; a name it resolves to a denied address
    never connects."""
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return {"hooks.example": ["127.0.0.1"], "meta.example": ["169.254.169.254"]}[host]

    policy = dataclasses.replace(url_policy.UrlPolicy(), resolver=resolver)
    body, headers = _message()
    async with webhooks.WebhookSender(policy) as sender:
        ok = await sender.send(f"http://hooks.example:{receiver.port}/ok", body, headers)
        denied = await sender.send(f"http://meta.example:{receiver.port}/ok", body, headers)
    assert ok.ok, ok
    assert denied.final and not denied.ok and denied.error is not None
    assert denied.error.startswith("url_forbidden:")
    ((_, got_headers, _),) = receiver.hits
    assert got_headers["Host"] == f"hooks.example:{receiver.port}"
    assert lookups == ["hooks.example", "meta.example"]


async def test_a_callback_host_whose_dns_never_answers_fails_the_try_within_the_bound() -> None:
    """A resolver that swallows the query must not hold a delivery slot for ever."""

    async def never_answers(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    policy = url_policy.UrlPolicy(resolver=never_answers, resolve_timeout_s=0.2)
    body, headers = _message()
    async with webhooks.WebhookSender(policy, timeout_s=5) as sender:
        # The guard only turns a hang into a failure; the bound under test is the policy's.
        result = await asyncio.wait_for(sender.send("http://hooks.example/cb", body, headers), 10)
    assert not result.ok and not result.final
    assert result.error == "dns_error: host could not be resolved"
