"""The batch's fold and view: pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet import errors
from comfy_fleet.batches import batch_state
from comfy_fleet.log import events
from comfy_fleet.log.events import StoredEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUB = events.BatchSubmitted(
    tenant="default", task_ids=["a", "b", "c"], client_batch_id="cb", callback_url="http://x/h",
    priority=2, request_hash="h", kind="sweep",
)


def stream(*evs: events.Event) -> list[StoredEvent]:
    return [
        StoredEvent(task_id="b1", seq=i, event=e, at=T0 + timedelta(seconds=i))
        for i, e in enumerate(evs, 1)
    ]


def completed(at: datetime = T0) -> events.BatchCompleted:
    return events.BatchCompleted(finished_at=at.isoformat(), counts={"succeeded": 3})


def test_submitted_then_running_then_completed_once() -> None:
    s = batch_state.replay(stream(SUB))
    assert s is not None and s.status == "running" and s.task_ids == ["a", "b", "c"]
    assert s.webhook is None
    end = T0 + timedelta(seconds=9)
    s = batch_state.replay(stream(SUB, completed(end), completed(T0)))
    assert s is not None
    assert s.status == "completed" and s.end_seq == 2 and s.finished_at == end
    assert s.webhook == "pending"


def test_webhook_tries_and_cancel() -> None:
    s = batch_state.replay(stream(
        SUB, events.BatchCancelRequested(), completed(),
        events.WebhookAttempted(webhook_id="m", attempt=1, status_code=500, retry_in_s=1.0),
        events.WebhookDelivered(webhook_id="m", attempt=2, status_code=200),
    ))
    assert s is not None
    assert s.cancel_requested and s.webhook == "delivered" and s.webhook_attempts == 2
    dead = batch_state.replay(
        stream(SUB, completed(), events.WebhookDead(webhook_id="m", attempts=4))
    )
    assert dead is not None and dead.webhook == "dead"


def test_without_callback_no_webhook_is_pending() -> None:
    bare = events.BatchSubmitted(tenant="t", task_ids=["a"])
    s = batch_state.replay(stream(bare, completed()))
    assert s is not None and s.status == "completed" and s.webhook is None


def test_a_stream_must_start_with_submitted_and_not_skip() -> None:
    with pytest.raises(errors.FleetError):
        batch_state.replay(stream(completed()))
    good = stream(SUB, completed())
    with pytest.raises(errors.FleetError):
        batch_state.replay([good[0], StoredEvent("b1", 3, completed(), T0)])


def test_view_counts_every_status_and_completes_with_its_tasks() -> None:
    s = batch_state.replay(stream(SUB))
    assert s is not None
    running = batch_state.to_view(s, {"queued": 1, "succeeded": 2})
    assert running["status"] == "running" and running["finished_at"] is None
    assert running["counts"] == {
        "queued": 1, "dispatched": 0, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 0,
    }
    # Every task ended, `batch.completed` not yet recorded: completed already, at the last end.
    last = T0 + timedelta(seconds=5)
    done = batch_state.to_view(s, {"succeeded": 2, "cancelled": 1}, last)
    assert done["status"] == "completed" and done["finished_at"] == "2026-01-01T00:00:05Z"
    assert done["tenant"] == "default" and done["client_batch_id"] == "cb"
    assert done["task_ids"] == ["a", "b", "c"] and done["priority"] == 2
