"""The webhook dispatcher's LISTEN connection to PostgreSQL is cut (its backend terminated) and a
task's end is committed while it is down: that notice is lost, and the dispatcher must find the
delivery in the outbox when it listens again, not wait for its slow safety-net scan."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web

from actors import webhook_dispatcher
from actors.webhook_dispatcher import WebhookDispatcher
from comfy_fleet.log import events, task_state
from comfy_fleet.policies import url_policy
from comfy_fleet import views
from comfy_fleet.delivery import webhooks
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet_devstack.tcp_proxy import TcpProxy
from tests.support.listener_cut import cut_listener
from tests.support.polling import eventually

pytestmark = [pytest.mark.postgres]


async def serve_hook(handle: Callable[[web.Request], Awaitable[web.Response]]) -> tuple[str, web.AppRunner]:
    """A webhook receiver on 127.0.0.1: its URL, and the runner to clean up."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook", runner  # type: ignore[union-attr]


async def test_an_end_committed_while_the_listener_is_cut_is_delivered_after_it_reconnects(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the catch-up after the reconnect can find it: the timed scan is an hour away.
    monkeypatch.setattr(webhook_dispatcher, "OUTBOX_SCAN_S", 3600.0)
    heard: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        heard.append(request.headers["webhook-id"])
        return web.Response(text="ok")

    url, runner = await serve_hook(handle)

    log = await PostgresEventLog.connect(pg_dsn)

    async def body(state: task_state.TaskState) -> dict[str, Any]:
        return await views.webhook_body(state, None, 60)

    dispatcher = WebhookDispatcher(
        log=log, sender=webhooks.WebhookSender(url_policy.UrlPolicy.build()),
        policy=webhooks.RetryPolicy(max_attempts=3), secret=None, body_builder=body,
    )
    try:
        await dispatcher.start()
        await eventually(lambda: log._notify_conn is not None, what="listening")  # noqa: SLF001
        pid = await cut_listener(log, pg_dsn)

        # The task ends now: nobody listens, the notice is lost.
        task_id = str(uuid.uuid4())
        state = await log.append(task_id, 0, [events.TaskSubmitted(
            workflow="solid", workflow_version="v1", params={}, prompt={}, callback_url=url)])
        state = await log.append(task_id, state.seq, [
            events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
            events.TaskSucceeded(prompt_id="p"),
        ], state)
        assert state.webhook == task_state.WEBHOOK_PENDING

        async def delivered() -> bool:
            return (await log.get(task_id)).webhook == task_state.WEBHOOK_DELIVERED

        await eventually(delivered, timeout=20, what="delivered after the reconnect")
        assert heard == [webhooks.webhook_id(task_id, state.end_seq or 0)]
        assert log._notify_conn is not None and log._notify_conn.get_server_pid() != pid  # noqa: SLF001
    finally:
        await dispatcher.stop()
        await log.close()
        await runner.cleanup()


async def test_a_try_that_cannot_reach_the_database_is_tried_again_by_itself(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No scan to fall back on: neither the timed one nor the one after the listener reconnects.
    monkeypatch.setattr(webhook_dispatcher, "OUTBOX_SCAN_S", 3600.0)
    monkeypatch.setattr(webhook_dispatcher, "UNAVAILABLE_RETRY_S", 0.2)
    monkeypatch.setattr(WebhookDispatcher, "_catch_up", lambda self: None)
    answers = [500]  # the first try fails; the retry comes while PostgreSQL is away
    heard: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        status = answers.pop(0) if answers else 200
        heard.append(status)
        return web.Response(status=status, text="ok")

    url, runner = await serve_hook(handle)

    target = urlsplit(pg_dsn)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    through_proxy = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    direct = await PostgresEventLog.connect(pg_dsn)
    log = await PostgresEventLog.connect(through_proxy)

    async def body(state: task_state.TaskState) -> dict[str, Any]:
        return await views.webhook_body(state, None, 60)

    dispatcher = WebhookDispatcher(
        log=log, sender=webhooks.WebhookSender(url_policy.UrlPolicy.build()),
        policy=webhooks.RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=1.0),
        secret=None, body_builder=body,
    )
    try:
        await dispatcher.start()
        task_id = str(uuid.uuid4())
        state = await direct.append(task_id, 0, [events.TaskSubmitted(
            workflow="solid", workflow_version="v1", params={}, prompt={}, callback_url=url)])
        await direct.append(task_id, state.seq, [
            events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
            events.TaskSucceeded(prompt_id="p"),
        ], state)
        await eventually(lambda: heard == [500], timeout=30, what="the first try answered 500")
        await eventually(lambda: dispatcher.slots.paused == 1, timeout=30, what="backing off")
        await proxy.pause()  # PostgreSQL goes away for the dispatcher during the backoff
        await asyncio.sleep(1.5)  # the retry (due within 1 s) meets the outage
        assert heard == [500]  # nothing sent while the task could not be read
        await proxy.resume()

        async def delivered() -> bool:
            return (await direct.get(task_id)).webhook == task_state.WEBHOOK_DELIVERED

        await eventually(delivered, timeout=40, what="delivered once PostgreSQL was back")
        assert heard == [500, 200]
    finally:
        if proxy.paused:
            await proxy.resume()
        await dispatcher.stop()
        await log.close()
        await direct.close()
        await proxy.close()
        await runner.cleanup()
