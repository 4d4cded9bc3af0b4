"""What one webhook try meant, and what comes after it: pure, for task ends and batch
completions alike (the loop that makes the tries is actors/webhook_tries.py).

A try's `Verdict` is the events that record it (`webhook.delivered`; or `webhook.attempted`,
then `webhook.dead` when no try is left) and the delay before the next try, which
`RetryPolicy` draws. Once those events are appended, `after_recording` says what the delivery
does next: it is over (`DONE`), its stream's end changed meanwhile so the new end is delivered
at once with a budget of its own (`AFRESH`), or it tries again after the delay.

A delivery's time budget (`RetryPolicy.total_budget_s`) counts from when it began, as the log
recorded it (`began_at`): the stream's end, or a redelivery asked for since. An actor that
restarts in the middle of a delivery reads that time again, so it gives up when the one before
it would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from comfy_fleet.log import events

if TYPE_CHECKING:  # the sender's module loads aiohttp; this one stays free of I/O
    from comfy_fleet.delivery.webhooks import Attempt, RetryPolicy

#: What a try leads to, besides a delay in seconds before the next one (`Step`).
#: Over: delivered, dead, or nothing (left) to deliver.
DONE = "done"
#: Not tried: its receiver is full, and `DeliverySlots` starts it again when that one has room.
PARKED = "parked"
#: The stream's end changed while it was tried: deliver the new end now, its budget anew.
AFRESH = "afresh"
Step = float | str

#: What a try counts as (the dispatcher's counters and the `webhook_tries` metric).
Outcome = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    #: the events that record the try, in order
    events: list[events.Event]
    #: seconds before the next try; None: there is none (delivered or dead)
    delay_s: float | None


def judge(
    result: Attempt, *, webhook_id: str, attempt: int, policy: RetryPolicy,
    rng: random.Random, elapsed_s: float,
) -> Verdict:
    """What try number `attempt` of `webhook_id` got (`result`), `elapsed_s` after the delivery
    began (`began_at`). A failed try is retried while the policy gives a delay and the URL is not
    refused for good (`result.final`); `rng` is drawn from only then."""
    if result.ok:
        delivered = events.WebhookDelivered(
            webhook_id=webhook_id, attempt=attempt, status_code=result.status_code or 200
        )
        return Verdict("delivered", [delivered], None)
    delay = None if result.final else policy.next_delay(attempt, rng, elapsed_s)
    new: list[events.Event] = [
        events.WebhookAttempted(
            webhook_id=webhook_id, attempt=attempt, status_code=result.status_code,
            error=result.error, retry_in_s=delay,
        )
    ]
    if delay is None:
        new.append(events.WebhookDead(webhook_id=webhook_id, attempts=attempt))
        return Verdict("dead", new, None)
    return Verdict("retry", new, delay)


def after_recording(verdict: Verdict, *, pending: bool, end_changed: bool) -> Step:
    """What follows a try whose events are appended: `pending` is the stream's webhook state
    after them, `end_changed` whether its end (`end_seq`) moved meanwhile (a task's outputs
    recovered after a storage failure): the recorded try then belongs to the old end."""
    if not pending:
        return DONE
    if end_changed or verdict.outcome == "delivered":
        return AFRESH
    if verdict.delay_s is None:
        return DONE
    return float(verdict.delay_s)


def began_at(
    *, end_seq: int, seq: int, updated_at: datetime, tail: Sequence[events.StoredEvent]
) -> datetime:
    """When the delivery of a stream's end began: the start of its time budget. `end_seq` is the
    seq of the end (a task's end or its recovered outputs, a batch's completion), `seq` and
    `updated_at` the stream's last event's; `tail` its events from `end_seq` on, needed only
    when that last event is not the end (a try, a redelivery came since). The later of the
    end's recorded time and the last redelivery asked for after it (which resets the tries)."""
    if seq == end_seq:
        return updated_at  # a fresh end: nothing was read
    began: datetime | None = None
    for stored in tail:
        if stored.seq == end_seq or (
            stored.seq > end_seq and isinstance(stored.event, events.WebhookRedeliveryRequested)
        ):
            began = stored.at
    # A tail that lacks the end (not read from it) falls back to the latest time: a budget is
    # never cut short.
    return began if began is not None else updated_at


def elapsed_s(began: datetime, now: datetime) -> float:
    """Seconds from `began` to `now`; never negative (the recording host's clock may run ahead
    of the reader's)."""
    return max(0.0, (now - began).total_seconds())
