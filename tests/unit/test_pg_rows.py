"""The log's rows (comfy_fleet/log/pg_rows.py): an append's arguments for a batch's stream as its
statement takes them, a stored event and a waiting task's row read back. No database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from comfy_fleet.batches import batch_state
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.log import events, pg_rows

AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def submitted_batch(batch_id: str) -> BatchState:
    return batch_state.evolve(None, events.StoredEvent(
        task_id=batch_id, seq=1, at=AT,
        event=events.BatchSubmitted(tenant="t", task_ids=["a"], callback_url="http://h/b"),
    ))


def test_append_args_are_the_events_then_the_read_model_row() -> None:
    batch_id = str(uuid.uuid4())
    before = submitted_batch(batch_id)
    new = [
        events.BatchCompleted(finished_at=AT.isoformat(), counts={"succeeded": 1}),
        events.WebhookAttempted(webhook_id="msg_x_2", attempt=1, status_code=500),
    ]
    seen: list[tuple[BatchState | None, BatchState]] = []

    def read_model(b: BatchState | None, a: BatchState) -> tuple[object, ...]:
        seen.append((b, a))
        return a.status, a.webhook, a.seq

    after, args = pg_rows.append_args(batch_id, 1, new, before, batch_state.evolve, read_model)

    assert (after.seq, after.status, after.webhook, after.webhook_attempts) == (
        3, batch_state.COMPLETED, "pending", 1
    )
    assert seen == [(before, after)]
    stream_id, seqs, types, versions, payloads, ats, *row = args
    assert stream_id == batch_id and seqs == [2, 3]
    assert types == ["batch.completed", "webhook.attempted"]
    assert versions == [e.SCHEMA_VERSION for e in new]
    assert payloads == [e.payload() for e in new]
    assert len(set(ats)) == 1 and ats[0] == after.updated_at
    assert row == [batch_state.COMPLETED, "pending", 3]
    assert before.seq == 1 and before.end_seq is None  # the state given is not changed


def test_a_stored_event_and_a_queued_row_read_back() -> None:
    row = {
        "seq": 4, "type": "webhook.dead", "schema_version": 1, "recorded_at": AT, "position": 9,
        "payload": {"webhook_id": "msg_t_3", "attempts": 8},
    }
    stored = pg_rows.stored_event("t", row)
    assert stored == events.StoredEvent(
        task_id="t", seq=4, at=AT, position=9,
        event=events.WebhookDead(webhook_id="msg_t_3", attempts=8),
    )
    task_id = uuid.uuid4()
    queued = {"task_id": task_id, "priority": 2, "created_at": AT, "workflow": "solid",
              "labels": None, "tenant": "default"}
    assert pg_rows.queued_row(queued) == (
        str(task_id), 2, AT.timestamp(), "solid", [], "default"
    )


def test_only_a_uuid_names_a_stream() -> None:
    assert pg_rows.is_uuid(str(uuid.uuid4()))
    assert not any(pg_rows.is_uuid(v) for v in ("", "batch:1", "x" * 36, None))  # type: ignore[arg-type]
