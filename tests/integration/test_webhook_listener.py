"""The webhook dispatcher's LISTEN connection to PostgreSQL is cut (its backend terminated) and a
task's end is committed while it is down: that notice is lost, and the dispatcher must find the
delivery in the outbox when it listens again, not wait for its slow safety-net scan."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp import web

from actors import webhook_dispatcher
from actors.webhook_dispatcher import WebhookDispatcher
from core import events, task_state, url_policy, views, webhooks
from core.postgres import PostgresEventLog
from tests.support.listener_cut import cut_listener
from tests.support.polling import eventually

pytestmark = [pytest.mark.postgres]


async def test_an_end_committed_while_the_listener_is_cut_is_delivered_after_it_reconnects(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the catch-up after the reconnect can find it: the timed scan is an hour away.
    monkeypatch.setattr(webhook_dispatcher, "OUTBOX_SCAN_S", 3600.0)
    heard: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        heard.append(request.headers["webhook-id"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]

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
