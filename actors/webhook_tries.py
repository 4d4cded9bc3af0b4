"""WebhookTries: one try of a webhook delivery, for a task's end and a batch's completion alike.

A try reads the stream's state from the log (the outbox: its webhook is `pending`), takes a
slot of its receiver (`DeliverySlots.bind`), signs and POSTs the body once, appends the events
that record what it got (re-reading the state when another writer took the seq), and says
what comes next. What the try meant and what follows are `comfy_fleet.delivery.tries`'. What
differs between tasks and batches (how their state is read, their body, their append) is an
`Outbox`: actors/webhook_dispatcher.py's for task ends, actors/batch_webhooks.py's for batches.
The dispatcher schedules the tries (`WebhookDispatcher._run`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from actors import metrics
from comfy_fleet import errors, hop_trace
from comfy_fleet.delivery import tries, webhooks
from comfy_fleet.delivery.slots import DeliverySlots, receiver_of
from comfy_fleet.log import event_log, events, task_state

log = logging.getLogger("comfy_fleet.webhooks")

#: Attempts at recording a try whose seq another writer took meanwhile.
APPEND_ATTEMPTS = 8
#: Seconds before recording a try again when the database is away.
APPEND_UNAVAILABLE_S = 1.0


class Deliverable(Protocol):
    """What a try reads of a stream's state (`TaskState` and `BatchState` have it)."""

    seq: int
    webhook: str | None
    callback_url: str | None
    #: the seq of the event that ended the stream: the webhook's id derives from it
    end_seq: int | None
    webhook_attempts: int
    #: when the stream's last event (`seq`) was recorded
    updated_at: datetime


S = TypeVar("S", bound=Deliverable)


class Outbox(Protocol, Generic[S]):
    """One kind of stream whose end is delivered: how a try reads, shows and records it."""

    #: "task" or "batch": names the stream in messages (and `fleet_<kind>_id` in log lines)
    kind: str

    async def state(self, stream_id: str) -> S: ...

    async def body(self, state: S) -> bytes:
        """The JSON body of the stream's end, built afresh for each try."""
        ...

    async def append(self, stream_id: str, state: S, new: list[events.Event]) -> S:
        """Append `new` after `state.seq`: ConcurrencyConflict when that seq is taken."""
        ...

    async def tail(self, stream_id: str, end_seq: int) -> list[events.StoredEvent]:
        """The stream's events from `end_seq` on (more before it do no harm)."""
        ...


class WebhookTries:
    def __init__(
        self, *, sender: webhooks.WebhookSender, policy: webhooks.RetryPolicy,
        key: bytes | None, rng: random.Random, slots: DeliverySlots,
    ) -> None:
        self.sender = sender
        self.policy = policy
        #: the HMAC key of the signatures (None: unsigned)
        self.key = key
        self.rng = rng
        self.slots = slots
        self.counts: dict[str, int] = {"delivered": 0, "retry": 0, "dead": 0}
        #: when the delivery under way began, by delivery key: the start of the policy's budget,
        #: read from the log at this actor's first try of it (`tries.began_at`), so a restart
        #: does not start the budget anew
        self._began: dict[str, datetime] = {}

    def forget(self, key: str) -> None:
        """The delivery under `key` is over: its next one starts a budget of its own."""
        self._began.pop(key, None)

    async def once(self, key: str, stream_id: str, outbox: Outbox[S]) -> tries.Step:
        """Send the stream's end once and record the try. `key` is the delivery's key in the
        slots. Returns DONE (delivered, dead, or nothing to deliver), PARKED, or the seconds
        until the next try. The state and the body are read and built for each try: nothing
        is held between tries, and a late try's body (presigned URLs) is fresh."""
        state = await outbox.state(stream_id)
        if (state.webhook != task_state.WEBHOOK_PENDING or not state.callback_url
                or state.end_seq is None):
            return tries.DONE
        if not self.slots.bind(key, receiver_of(state.callback_url)):
            return tries.PARKED
        msg_id = webhooks.webhook_id(stream_id, state.end_seq)
        body = await outbox.body(state)
        attempt = state.webhook_attempts + 1
        began = self._began.get(key)
        if began is None:
            began = self._began[key] = await self._began_at(stream_id, outbox, state, state.end_seq)
        headers = webhooks.build_headers(msg_id, int(time.time()), body, self.key)
        hop_trace.mark("webhook.send", stream_id)
        result = await self.sender.send(state.callback_url, body, headers)
        hop_trace.mark("webhook.sent", stream_id)
        verdict = tries.judge(
            result, webhook_id=msg_id, attempt=attempt, policy=self.policy, rng=self.rng,
            elapsed_s=tries.elapsed_s(began, event_log.now()),
        )
        self.counts[verdict.outcome] += 1
        metrics.webhook_try(verdict.outcome)
        if verdict.outcome == "dead":
            log.warning(
                "webhook dead after %d tries", attempt,
                extra={f"fleet_{outbox.kind}_id": stream_id, "webhook_id": msg_id},
            )
        before = state.end_seq
        state = await self._record(stream_id, outbox, state, verdict.events)
        step = tries.after_recording(
            verdict, pending=state.webhook == task_state.WEBHOOK_PENDING,
            end_changed=state.end_seq != before,
        )
        if step == tries.AFRESH:
            self.forget(key)
            return 0.0
        return step

    async def _began_at(
        self, stream_id: str, outbox: Outbox[S], state: S, end_seq: int
    ) -> datetime:
        """When the delivery of `state`'s end (`end_seq`) began, from the log: read only when
        events came after the end (tries before a restart, a redelivery); a fresh end is the
        stream's last event, and its first try (from the ended notice) reads nothing."""
        tail = [] if state.seq == end_seq else await outbox.tail(stream_id, end_seq)
        return tries.began_at(end_seq=end_seq, seq=state.seq, updated_at=state.updated_at, tail=tail)

    async def _record(
        self, stream_id: str, outbox: Outbox[S], state: S, new: list[events.Event]
    ) -> S:
        """Record a try. Other writers may append meanwhile (a late event): re-read, retry."""
        for _ in range(APPEND_ATTEMPTS):
            try:
                return await outbox.append(stream_id, state, new)
            except errors.ConcurrencyConflict:
                state = await outbox.state(stream_id)
            except errors.DatabaseUnavailable:
                await asyncio.sleep(APPEND_UNAVAILABLE_S)
        raise errors.ConcurrencyConflict(f"{outbox.kind} {stream_id}: could not record webhook try")
