"""What one webhook try meant and what follows it (comfy_fleet/delivery/tries.py): pure, no
sender and no log."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet.delivery import tries
from comfy_fleet.delivery.webhooks import Attempt, RetryPolicy
from comfy_fleet.log import events

POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=8.0, total_budget_s=60.0)
MSG = "msg_t_4"


def judge(result: Attempt, attempt: int = 1, elapsed_s: float = 0.0, seed: int = 7) -> tries.Verdict:
    return tries.judge(
        result, webhook_id=MSG, attempt=attempt, policy=POLICY, rng=random.Random(seed),
        elapsed_s=elapsed_s,
    )


def test_a_2xx_is_delivered() -> None:
    verdict = judge(Attempt(True, 204, None, 0.1), attempt=2)
    assert verdict == tries.Verdict(
        "delivered", [events.WebhookDelivered(webhook_id=MSG, attempt=2, status_code=204)], None
    )


def test_a_failure_is_retried_after_the_policys_delay() -> None:
    verdict = judge(Attempt(False, 500, "http_status: 500", 0.1), attempt=2, elapsed_s=3.0)
    delay = POLICY.next_delay(2, random.Random(7), 3.0)
    assert delay is not None
    assert verdict == tries.Verdict("retry", [events.WebhookAttempted(
        webhook_id=MSG, attempt=2, status_code=500, error="http_status: 500", retry_in_s=delay,
    )], delay)


@pytest.mark.parametrize(
    ("result", "attempt", "elapsed_s"),
    [
        (Attempt(False, None, "timeout: no answer", 10.0), 3, 0.0),  # the last try
        (Attempt(False, None, "connect_error: could not connect", 0.1), 1, 61.0),  # no budget
        (Attempt(False, None, "url_forbidden: private", 0.0, final=True), 1, 0.0),  # for good
    ],
)
def test_no_try_left_is_dead(result: Attempt, attempt: int, elapsed_s: float) -> None:
    verdict = judge(result, attempt=attempt, elapsed_s=elapsed_s)
    assert verdict == tries.Verdict("dead", [
        events.WebhookAttempted(
            webhook_id=MSG, attempt=attempt, status_code=None, error=result.error, retry_in_s=None
        ),
        events.WebhookDead(webhook_id=MSG, attempts=attempt),
    ], None)


def test_a_url_refused_for_good_draws_no_delay() -> None:
    rng = random.Random(1)
    before = rng.getstate()
    tries.judge(
        Attempt(False, None, "url_forbidden: private", 0.0, final=True), webhook_id=MSG,
        attempt=1, policy=POLICY, rng=rng, elapsed_s=0.0,
    )
    assert rng.getstate() == before


RETRY = tries.Verdict("retry", [], 2.5)
DELIVERED = tries.Verdict("delivered", [], None)
DEAD = tries.Verdict("dead", [], None)


@pytest.mark.parametrize(
    ("verdict", "pending", "end_changed", "step"),
    [
        (RETRY, True, False, 2.5),  # tried again after the delay
        (RETRY, False, False, tries.DONE),  # delivered or redelivered by someone else meanwhile
        (DELIVERED, False, False, tries.DONE),
        (DEAD, False, False, tries.DONE),
        (RETRY, True, True, tries.AFRESH),  # the try was of the old end: deliver the new one
        (DELIVERED, True, True, tries.AFRESH),
        (DELIVERED, True, False, tries.AFRESH),  # pending again although this try delivered
        (DEAD, True, False, tries.DONE),
    ],
)
def test_what_follows_a_recorded_try(
    verdict: tries.Verdict, pending: bool, end_changed: bool, step: tries.Step
) -> None:
    assert tries.after_recording(verdict, pending=pending, end_changed=end_changed) == step


T0 = datetime(2025, 1, 1, tzinfo=UTC)


def stored(seq: int, event: events.Event, minutes: int) -> events.StoredEvent:
    return events.StoredEvent(task_id="t", seq=seq, event=event, at=T0 + timedelta(minutes=minutes))


TRIED = events.WebhookAttempted(webhook_id=MSG, attempt=1, status_code=500, error=None, retry_in_s=9.0)
END = events.TaskSucceeded(prompt_id="p")


def test_a_fresh_end_began_at_its_own_time_with_nothing_read() -> None:
    assert tries.began_at(end_seq=4, seq=4, updated_at=T0, tail=[]) == T0


def test_a_delivery_under_way_began_at_its_end_not_at_its_last_try() -> None:
    # What an actor restarted after two tries reads: the budget is the one its first life had.
    tail = [stored(4, END, 0), stored(5, TRIED, 3), stored(6, TRIED, 50)]
    assert tries.began_at(end_seq=4, seq=6, updated_at=T0 + timedelta(minutes=50), tail=tail) == T0


def test_a_redelivery_begins_a_delivery_of_its_own() -> None:
    tail = [
        stored(4, END, 0), stored(5, events.WebhookDead(webhook_id=MSG, attempts=8), 60),
        stored(6, events.WebhookRedeliveryRequested(), 120), stored(7, TRIED, 121),
    ]
    at = tries.began_at(end_seq=4, seq=7, updated_at=T0 + timedelta(minutes=121), tail=tail)
    assert at == T0 + timedelta(minutes=120)


def test_a_batch_delivery_began_at_its_completion() -> None:
    completed = events.BatchCompleted(finished_at=T0.isoformat(), counts={"succeeded": 2})
    tail = [
        stored(1, events.BatchSubmitted(tenant="acme", task_ids=["a", "b"]), -5),
        stored(2, completed, 0), stored(3, TRIED, 1),
    ]
    assert tries.began_at(end_seq=2, seq=3, updated_at=T0 + timedelta(minutes=1), tail=tail) == T0


def test_elapsed_time_is_never_negative() -> None:
    assert tries.elapsed_s(T0, T0 + timedelta(seconds=90)) == 90.0
    assert tries.elapsed_s(T0 + timedelta(seconds=2), T0) == 0.0  # the recorder's clock ran ahead
