"""WebhookDispatcher: delivers each task end to its callback_url, from the log (an outbox).

A task that ended with a callback has `webhook: pending` in the read model, in the same
statement that recorded its end; that statement also notifies the log's listeners, so the
dispatcher hears of every end at its commit, whoever recorded it (`TaskNotices.listen_ended`). It
also scans the outbox (ids only) at start and each time its listener reconnects, so an end
whose notice was lost (the dispatcher was restarting, its listener reconnecting) is still
delivered, and on a slow timer as a safety net. Each try is an event; the delay
between tries is `RetryPolicy`'s exponential backoff with jitter. Each try runs in its own
asyncio task with a bounded timeout. At most `max_in_flight` run at once and at most
`max_per_receiver` to one receiver (`DeliverySlots`), so a slow receiver never delays the
others and a backlog of ended tasks waits as ids, not as bodies in memory. All tries of one end
carry the same `webhook-id` (derived from the seq of the final event). A try itself is
actors/webhook_tries.py's, the same for a task's end (`TaskOutbox`) and a batch's completion
(actors/batch_webhooks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from actors import batch_webhooks
from actors.webhook_tries import WebhookTries
from comfy_fleet import errors, hop_trace
from comfy_fleet.log import event_log, events
from comfy_fleet.delivery import tries, webhooks
from comfy_fleet.delivery.slots import UNKNOWN, DeliverySlots, receiver_of
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.net.fleet_refresher import FleetRefresher
from comfy_fleet.policies.fleet_addresses import FleetAddresses

log = logging.getLogger("comfy_fleet.webhooks")

#: Seconds between scans of the outbox besides those at start and after a reconnect of the
#: listener (which are what pick up the notices lost meanwhile): a safety net.
OUTBOX_SCAN_S = 30.0
#: Seconds before a delivery whose try could not reach the database tries again.
UNAVAILABLE_RETRY_S = 2.0

#: Builds the JSON body of a task end: (state) -> body dict. Injected so the API's view
#: (with fresh presigned URLs, legacy fields) is the one the receiver sees.
BodyBuilder = Callable[[TaskState], Awaitable[dict[str, Any]]]


class DispatcherLog(
    event_log.TaskStream, event_log.TaskQueries, event_log.TaskNotices, event_log.BatchLog, Protocol
):
    """What the dispatcher needs of the log: the outbox and the task ends' notices, each task's
    state, and its stream to record each try; the same of batches (actors/batch_webhooks.py)."""


class TaskOutbox:
    """Task ends, as `WebhookTries` delivers them: the body is the API's view of the task."""

    kind = "task"

    def __init__(self, log: DispatcherLog, body_builder: BodyBuilder) -> None:
        self.log = log
        self.body_builder = body_builder
        #: the state an ended notice carried, for the try that notice started (taken by it)
        self.carried: dict[str, dict[str, Any]] = {}

    async def state(self, task_id: str) -> TaskState:
        """The task's state: the one its ended notice carried for a first try it started (the
        state that very append committed), else read."""
        carried = self.carried.pop(task_id, None)
        if carried is not None:
            return event_log.state_from_json(carried)
        return await self.log.get(task_id)

    async def body(self, state: TaskState) -> bytes:
        return orjson.dumps({"type": state.end_type, **(await self.body_builder(state))})

    async def append(self, task_id: str, state: TaskState, new: list[events.Event]) -> TaskState:
        return await self.log.append(task_id, state.seq, new, state)

    async def tail(self, task_id: str, end_seq: int) -> list[events.StoredEvent]:
        return await self.log.read(task_id, end_seq - 1)


class WebhookDispatcher(batch_webhooks.BatchDeliveries):
    def __init__(
        self,
        *,
        log: DispatcherLog,
        sender: webhooks.WebhookSender,
        policy: webhooks.RetryPolicy,
        secret: str | None,
        body_builder: BodyBuilder,
        rng: random.Random | None = None,
        max_in_flight: int = 256,
        max_per_receiver: int = 64,
        fleet: FleetAddresses | None = None,
        fleet_refresher: FleetRefresher | None = None,
    ) -> None:
        self.log = log
        #: the fleet the sender's URL policy denies, kept current by `fleet_refresher`
        self.fleet = fleet
        self.fleet_refresher = fleet_refresher
        self.sender = sender
        self.slots = DeliverySlots(max_in_flight, max_per_receiver)
        self.tries = WebhookTries(
            sender=sender, policy=policy, key=webhooks.parse_secret(secret) if secret else None,
            rng=rng or random.Random(), slots=self.slots,
        )
        #: delivered, retried and dead tries since the start
        self.counts = self.tries.counts
        self.task_outbox = TaskOutbox(log, body_builder)
        #: the asyncio task of each delivery running now (at most `max_in_flight`)
        self.active: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._started = False
        self._stopping = False
        self._bg: set[asyncio.Task[Any]] = set()
        self._batches_init()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.fleet_refresher is not None:
            await self.fleet_refresher.refresh()
            self.fleet_refresher.start()
        await self.log.listen_ended(self._on_ended, self._catch_up, keep_states=True)
        await self._start_batches()
        task = asyncio.create_task(self._scan_loop())
        self._bg.add(task)

    def _catch_up(self) -> None:
        """The listener is (back) on: ends recorded while it was not were not heard."""
        task = asyncio.create_task(self._scan())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _on_ended(self, task_id: str, _endpoint: str | None, webhook_to: str | None) -> None:
        if webhook_to is None:
            return
        hop_trace.mark("webhook.heard", task_id)
        carried = self.log.ended_states.take(task_id)
        idle = task_id not in self.active
        self._ensure(task_id, webhook_to)
        if carried is not None and idle and task_id in self.active:
            # Its first try starts now, from the state the notice carried (no read). Only
            # then: a backlog waits as ids, and a later try reads afresh.
            self.task_outbox.carried[task_id] = carried

    async def stop(self) -> None:
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        for t in [*self._bg, *self.active.values()]:
            t.cancel()
        if self.fleet_refresher is not None:
            await self.fleet_refresher.stop()
        await self.sender.aclose()

    async def task_ended(self, task_id: str) -> None:
        """A task ended (or its redelivery was asked for): deliver its webhook if it has one."""
        await self.start()
        self._ensure(task_id)

    async def tasks_ended(self, task_ids: list[str]) -> None:
        await self.start()
        for task_id in task_ids:
            self._ensure(task_id)

    async def fleet_add(self, endpoint: str) -> None:
        """An endpoint joins the fleet: callbacks to it are denied from now on (the refresher
        would learn of it within a second; this closes that second)."""
        if self.fleet is not None:
            with contextlib.suppress(ValueError):
                self.fleet.add(endpoint)

    async def stats(self) -> dict[str, Any]:
        """`active`: deliveries running now; `waiting`: ids waiting for a slot; `backoff`:
        deliveries between two tries."""
        return {
            "active": self.slots.running, "waiting": self.slots.waiting,
            "backoff": self.slots.paused, **self.counts,
        }

    def _ensure(self, task_id: str, receiver: str = UNKNOWN) -> None:
        if self.slots.add(task_id, receiver):
            self._pump()

    def _pump(self) -> None:
        """Start every delivery that has a slot now."""
        while not self._stopping and (task_id := self.slots.next()) is not None:
            self.active[task_id] = asyncio.create_task(self._run(task_id))

    async def _scan_loop(self) -> None:
        while True:
            await self._scan()
            await self._scan_batches()
            await asyncio.sleep(OUTBOX_SCAN_S)

    async def _scan(self) -> None:
        try:
            for task_id, callback_url in await self.log.pending_webhooks():
                self._ensure(task_id, receiver_of(callback_url or ""))
        except errors.Unavailable:
            pass  # the listener's reconnect, or the next scan, comes back to it
        except Exception:
            log.exception("outbox scan failed")

    async def _run(self, task_id: str) -> None:
        """One try of a delivery, then what it leads to; frees the slot in every case."""
        outcome: tries.Step = tries.DONE
        try:
            if task_id.startswith(batch_webhooks.BATCH_KEY):
                batch_id = task_id[len(batch_webhooks.BATCH_KEY):]
                outcome = await self.tries.once(task_id, batch_id, self.batch_outbox)
            else:
                outcome = await self.tries.once(task_id, task_id, self.task_outbox)
        except errors.Unavailable:
            outcome = UNAVAILABLE_RETRY_S  # the database is away: no try was recorded
        except Exception:
            log.exception("webhook delivery of %s failed", task_id)
        finally:
            self.active.pop(task_id, None)
            self.task_outbox.carried.pop(task_id, None)
            if isinstance(outcome, float):
                self.slots.pause(task_id)
                self._timers[task_id] = asyncio.get_running_loop().call_later(
                    outcome, self._resume, task_id
                )
            elif outcome == tries.DONE:
                self.slots.done(task_id)
                self.tries.forget(task_id)
            self._pump()

    def _resume(self, task_id: str) -> None:
        self._timers.pop(task_id, None)
        if self.slots.resume(task_id):
            self._pump()
