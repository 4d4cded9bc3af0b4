"""WebhookDispatcher (actors/webhook_dispatcher.py) with an in-memory log, the real WebhookSender,
and a real aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import standardwebhooks
from aiohttp import web

from actors.webhook_dispatcher import WebhookDispatcher
from comfy_fleet.log import events, task_state
from comfy_fleet.policies import url_policy
from comfy_fleet import views
from comfy_fleet.delivery import webhooks
from comfy_fleet.delivery.slots import receiver_of
from comfy_fleet.log import event_log
from comfy_fleet.log.event_log import InMemoryEventLog
from tests.support.polling import eventually

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = webhooks.parse_secret(SECRET)
FAST = webhooks.RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, total_budget_s=30)


@dataclass
class Receiver:
    """Records every request per path; answers each path from its script (then 200)."""

    base: str = ""
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    #: paths whose handler sleeps this long before answering
    slow: dict[str, float] = field(default_factory=dict)
    #: paths whose handler waits for this event before answering
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    #: the base URL of a second port: the same handler as another receiver (origin)
    other_base: str = ""
    #: requests being answered now, and the most seen at once, by port
    open_now: dict[int, int] = field(default_factory=dict)
    open_most: dict[int, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def other_url(self, path: str) -> str:
        return f"{self.other_base}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["name"]
        port = int(request.host.rsplit(":", 1)[1])
        self.open_now[port] = self.open_now.get(port, 0) + 1
        self.open_most[port] = max(self.open_most.get(port, 0), self.open_now[port])
        try:
            return await self._answer(request, path)
        finally:
            self.open_now[port] -= 1

    async def _answer(self, request: web.Request, path: str) -> web.Response:
        body = await request.read()
        if path in self.slow:
            await asyncio.sleep(self.slow[path])
        if path in self.gates:
            await self.gates[path].wait()
        script = self.scripts.get(path) or []
        status = script.pop(0) if script else 200
        self.calls.setdefault(path, []).append(
            {"headers": dict(request.headers), "body": body, "status": status}
        )
        return web.Response(status=status, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", rec.handle)
    # A slow handler still sleeping at the end must not hold the teardown for long.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.base = f"http://127.0.0.1:{port}"
    other = web.TCPSite(runner, "127.0.0.1", 0)
    await other.start()
    rec.other_base = f"http://127.0.0.1:{other._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def dispatchers() -> AsyncIterator[list[WebhookDispatcher]]:
    made: list[WebhookDispatcher] = []
    yield made
    for d in made:
        await d.stop()


def make_dispatcher(
    log: InMemoryEventLog,
    made: list[WebhookDispatcher],
    *,
    policy: webhooks.RetryPolicy = FAST,
    timeout_s: float = 5.0,
    max_in_flight: int = 256,
    max_per_receiver: int = 64,
    rng: random.Random | None = None,
) -> WebhookDispatcher:
    sender = webhooks.WebhookSender(url_policy.UrlPolicy.build(), timeout_s=timeout_s)

    async def body(state: task_state.TaskState) -> dict[str, Any]:
        return await views.webhook_body(state, None, 60)

    d = WebhookDispatcher(
        log=log, sender=sender, policy=policy, secret=SECRET, body_builder=body,
        max_in_flight=max_in_flight, max_per_receiver=max_per_receiver, rng=rng,
    )
    made.append(d)
    return d


async def ended_task(log: InMemoryEventLog, callback_url: str) -> str:
    """A task that ran and succeeded, with a callback: its webhook is pending."""
    task_id = str(uuid.uuid4())
    await log.append(task_id, 0, [
        events.TaskSubmitted(workflow="solid", workflow_version="v1", params={}, prompt={},
                             callback_url=callback_url),
    ])
    await log.append(task_id, 1, [
        events.TaskDispatched(endpoint="127.0.0.1:1", prompt_id="p-" + task_id, attempt=1),
        events.TaskSucceeded(prompt_id="p-" + task_id),
    ])
    state = await log.get(task_id)
    assert state.webhook == task_state.WEBHOOK_PENDING
    return task_id


async def types_of(log: InMemoryEventLog, task_id: str) -> list[str]:
    return [e.type for e in await log.read(task_id)]


async def webhook_state(log: InMemoryEventLog, task_id: str) -> str | None:
    return (await log.get(task_id)).webhook


async def webhook_settled(log: InMemoryEventLog, task_id: str) -> str | None:
    """The webhook state once it is no longer pending (None while it is)."""
    state = await webhook_state(log, task_id)
    return None if state == task_state.WEBHOOK_PENDING else state


async def test_delivered_once_with_a_valid_signature(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    task_id = await ended_task(log, receiver.url("ok"))
    d = make_dispatcher(log, dispatchers)
    await d.task_ended(task_id)
    await eventually(lambda: webhook_settled(log, task_id), what="a webhook outcome")
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_DELIVERED
    await d.task_ended(task_id)  # told again: already delivered, nothing is sent
    await asyncio.sleep(0.1)

    [call] = receiver.calls["ok"]
    headers, body = call["headers"], call["body"]
    assert webhooks.verify(KEY, headers, body)
    # The official Standard Webhooks library accepts it as it is.
    payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "task.succeeded"
    assert payload["task"]["task_id"] == task_id and payload["task"]["status"] == "succeeded"
    state = await log.get(task_id)
    assert headers["webhook-id"] == webhooks.webhook_id(task_id, state.end_seq or 0)
    assert (await types_of(log, task_id))[-1] == "webhook.delivered"


async def test_500_500_200_is_delivered_on_the_third_try_with_one_id(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.scripts["flaky"] = [500, 500, 200]
    task_id = await ended_task(log, receiver.url("flaky"))
    d = make_dispatcher(log, dispatchers)
    await d.task_ended(task_id)
    await eventually(lambda: webhook_settled(log, task_id), what="a webhook outcome")
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_DELIVERED
    calls = receiver.calls["flaky"]
    assert [c["status"] for c in calls] == [500, 500, 200]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1
    assert all(webhooks.verify(KEY, c["headers"], c["body"]) for c in calls)

    stream = await log.read(task_id)
    hooks = [e.event for e in stream if e.type.startswith("webhook.")]
    assert [e.TYPE for e in hooks] == ["webhook.attempted", "webhook.attempted", "webhook.delivered"]
    assert [getattr(e, "attempt") for e in hooks] == [1, 2, 3]
    assert [getattr(e, "status_code") for e in hooks] == [500, 500, 200]
    assert all(getattr(e, "retry_in_s") is not None for e in hooks[:2])
    assert {getattr(e, "webhook_id") for e in hooks} == {calls[0]["headers"]["webhook-id"]}


async def test_always_500_ends_dead_after_max_attempts(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.scripts["down"] = [500] * 10
    task_id = await ended_task(log, receiver.url("down"))
    d = make_dispatcher(log, dispatchers)
    await d.task_ended(task_id)
    await eventually(lambda: webhook_settled(log, task_id), what="a webhook outcome")
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_DEAD
    assert len(receiver.calls["down"]) == FAST.max_attempts
    kinds = [t for t in await types_of(log, task_id) if t.startswith("webhook.")]
    assert kinds == ["webhook.attempted"] * FAST.max_attempts + ["webhook.dead"]
    last = (await log.read(task_id))[-2].event
    assert isinstance(last, events.WebhookAttempted) and last.retry_in_s is None
    await asyncio.sleep(0.1)
    assert len(receiver.calls["down"]) == FAST.max_attempts  # no more tries after dead


async def test_a_slow_receiver_does_not_delay_another_delivery(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.slow["slow"] = 6.0
    slow_task = await ended_task(log, receiver.url("slow"))
    fast_task = await ended_task(log, receiver.url("fast"))
    d = make_dispatcher(
        log, dispatchers,
        policy=webhooks.RetryPolicy(max_attempts=1),
        timeout_s=2.5,
    )
    await d.task_ended(slow_task)
    await eventually(lambda: "slow" in receiver.calls or d.active, what="slow delivery started")
    await d.task_ended(fast_task)
    await eventually(lambda: webhook_settled(log, fast_task), what="fast delivered")
    assert await webhook_state(log, fast_task) == task_state.WEBHOOK_DELIVERED
    # The slow one has not even finished its first try yet.
    assert [t for t in await types_of(log, slow_task) if t.startswith("webhook.")] == []
    await eventually(lambda: webhook_settled(log, slow_task), timeout=15, what="slow outcome")
    attempted = [e.event for e in await log.read(slow_task) if e.type == "webhook.attempted"]
    assert attempted and (attempted[0].error or "").startswith("timeout")
    assert await webhook_state(log, slow_task) == task_state.WEBHOOK_DEAD


async def test_redelivery_sends_again_with_the_same_id(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    task_id = await ended_task(log, receiver.url("again"))
    d = make_dispatcher(log, dispatchers)
    await d.task_ended(task_id)
    await eventually(lambda: webhook_settled(log, task_id), what="first delivery")
    state = await log.get(task_id)
    await log.append(task_id, state.seq, [events.WebhookRedeliveryRequested()], state)
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_PENDING
    await d.task_ended(task_id)
    await eventually(
        lambda: receiver_types(log, task_id)[-1] == "webhook.delivered"
        and receiver_types(log, task_id).count("webhook.delivered") == 2,
        what="redelivery recorded",
    )
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_DELIVERED
    first, second = receiver.calls["again"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert orjson.loads(second["body"])["task"]["task_id"] == task_id
    assert webhooks.verify(KEY, second["headers"], second["body"])
    kinds = [t for t in receiver_types(log, task_id) if t.startswith("webhook.")]
    assert kinds == ["webhook.delivered", "webhook.redelivery_requested", "webhook.delivered"]


def receiver_types(log: InMemoryEventLog, task_id: str) -> list[str]:
    """The task's event types, read synchronously (the in-memory log's stream)."""
    return [e.type for e in log._streams.get(task_id, [])]


async def test_a_restarted_dispatcher_finds_pending_deliveries(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    # One delivery was tried once and failed before the dispatcher died; one was never started
    # (the crash came between the task's end and its webhook).
    receiver.scripts["half"] = [500]
    half = await ended_task(log, receiver.url("half"))
    never = await ended_task(log, receiver.url("never"))
    first = make_dispatcher(
        log, dispatchers, policy=webhooks.RetryPolicy(max_attempts=5, base_delay_s=60, max_delay_s=60)
    )
    await first.task_ended(half)
    await eventually(lambda: "half" in receiver.calls, what="first try")
    await eventually(lambda: "webhook.attempted" in receiver_types(log, half), what="try recorded")
    await first.stop()

    second = make_dispatcher(log, dispatchers)
    await second.start()  # no task_ended call: the outbox scan must find both
    await eventually(lambda: webhook_settled(log, never), what="never-started delivered")
    await eventually(lambda: webhook_settled(log, half), what="half-done delivered")
    assert await webhook_state(log, never) == task_state.WEBHOOK_DELIVERED
    assert await webhook_state(log, half) == task_state.WEBHOOK_DELIVERED
    assert len(receiver.calls["never"]) == 1
    calls = receiver.calls["half"]
    assert [c["status"] for c in calls] == [500, 200]
    assert calls[0]["headers"]["webhook-id"] == calls[1]["headers"]["webhook-id"]
    delivered = [e.event for e in await log.read(half) if e.type == "webhook.delivered"]
    assert [getattr(e, "attempt") for e in delivered] == [2]  # numbering goes on from the log


async def test_a_restarted_dispatcher_keeps_the_time_budget_of_a_delivery_under_way(
    receiver: Receiver, dispatchers: list[WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget counts from the task's end as the log recorded it: a dispatcher restarted an
    hour into a delivery gives up at its next failed try, as the one before it would have."""
    policy = webhooks.RetryPolicy(
        max_attempts=5, base_delay_s=60, max_delay_s=60, total_budget_s=3600
    )
    receiver.scripts["late"] = [500, 500]
    log = InMemoryEventLog()
    with monkeypatch.context() as clock:  # the task ended, and its first try failed, 61 min ago
        clock.setattr(event_log, "now", lambda: datetime.now(UTC) - timedelta(minutes=61))
        task_id = await ended_task(log, receiver.url("late"))
        # Random(0) draws a delay of 50 s: the first dispatcher does not try again.
        first = make_dispatcher(log, dispatchers, policy=policy, rng=random.Random(0))
        await first.task_ended(task_id)
        await eventually(lambda: "webhook.attempted" in receiver_types(log, task_id), what="try 1")
        await first.stop()

    second = make_dispatcher(log, dispatchers, policy=policy)
    await second.start()  # the outbox scan finds the delivery
    await eventually(lambda: receiver_types(log, task_id).count("webhook.attempted") == 2,
                     what="try 2 recorded")
    assert len(receiver.calls["late"]) == 2
    hooks = [e.event for e in await log.read(task_id) if e.type.startswith("webhook.")]
    assert isinstance(hooks[1], events.WebhookAttempted) and hooks[1].retry_in_s is None
    assert hooks[2:] == [events.WebhookDead(webhook_id=hooks[1].webhook_id, attempts=2)]
    assert await webhook_state(log, task_id) == task_state.WEBHOOK_DEAD


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def test_deliveries_under_way_are_bounded_and_the_rest_wait_their_turn(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.slow["busy"] = 0.2
    tasks = [await ended_task(log, receiver.url("busy")) for _ in range(12)]
    d = make_dispatcher(log, dispatchers, max_in_flight=3)
    await d.tasks_ended(tasks)
    stats = await d.stats()
    assert (stats["active"], stats["waiting"]) == (3, 9)
    for task_id in tasks:
        await eventually(lambda t=task_id: webhook_settled(log, t), what="delivered in turn")
    assert {await webhook_state(log, t) for t in tasks} == {task_state.WEBHOOK_DELIVERED}
    assert len(receiver.calls["busy"]) == 12  # each once
    assert receiver.open_most[port_of(receiver.base)] == 3
    assert (await d.stats())["active"] == 0


async def test_a_slow_receiver_holds_at_most_its_share_and_another_receiver_goes_on(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.gates["slow"] = asyncio.Event()
    slow = [await ended_task(log, receiver.url("slow")) for _ in range(6)]
    d = make_dispatcher(log, dispatchers, max_in_flight=4, max_per_receiver=2)
    await d.tasks_ended(slow)
    await eventually(lambda: len(d.slots._queues.get(receiver_of(receiver.url("slow")), ())) == 4,
                     what="the slow receiver's extra deliveries parked")
    # Four slow deliveries wait, two are at the slow receiver: a new end to another receiver
    # starts at once and is delivered while the slow ones are still being answered.
    fast = await ended_task(log, receiver.other_url("fast"))
    await d.task_ended(fast)
    await eventually(lambda: webhook_settled(log, fast), what="the other receiver's delivery")
    assert len(receiver.calls.get("slow", [])) == 0  # none of the slow ones answered yet
    assert receiver.open_now[port_of(receiver.base)] == 2
    receiver.gates["slow"].set()
    for task_id in slow:
        await eventually(lambda t=task_id: webhook_settled(log, t), timeout=20, what="slow delivered")
    assert receiver.open_most[port_of(receiver.base)] == 2
    assert len(receiver.calls["slow"]) == 6


async def test_a_delivery_waiting_to_retry_holds_no_slot(
    receiver: Receiver, dispatchers: list[WebhookDispatcher]
) -> None:
    log = InMemoryEventLog()
    receiver.scripts["later"] = [500]
    later = await ended_task(log, receiver.url("later"))
    d = make_dispatcher(
        log, dispatchers, max_in_flight=1,
        policy=webhooks.RetryPolicy(max_attempts=3, base_delay_s=1.5, max_delay_s=1.5),
    )
    await d.task_ended(later)
    await eventually(lambda: "webhook.attempted" in receiver_types(log, later), what="first try failed")
    await eventually(lambda: d.slots.paused == 1, what="backing off")
    now = await ended_task(log, receiver.url("now"))
    await d.task_ended(now)
    await eventually(lambda: webhook_settled(log, now), what="delivered during the other's backoff")
    assert await webhook_state(log, later) == task_state.WEBHOOK_PENDING
    await eventually(lambda: webhook_settled(log, later), what="the retry delivered")
    assert [c["status"] for c in receiver.calls["later"]] == [500, 200]

