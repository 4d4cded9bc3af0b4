"""The fold: pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet import errors

from comfy_fleet.log import events, task_state
from comfy_fleet.log.events import StoredEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stream(*evs: events.Event, task_id: str = "t1") -> list[StoredEvent]:
    return [StoredEvent(task_id=task_id, seq=i, event=e, at=T0 + timedelta(seconds=i)) for i, e in enumerate(evs, 1)]


SUB = events.TaskSubmitted(
    workflow="w", workflow_version="1", params={}, prompt={}, callback_url="http://x/h", request_hash="h"
)
NOHOOK = events.TaskSubmitted(workflow="w", workflow_version="1", params={}, prompt={}, request_hash="h")


def test_happy_path() -> None:
    s = task_state.replay(
        stream(
            SUB,
            events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
            events.TaskStarted(prompt_id="p"),
            events.TaskProgressed(prompt_id="p", value=3, max=20, node="3"),
            events.TaskOutputStored(
                prompt_id="p", index=0, node_id="9", filename="a.png", subfolder="", kind="images",
                content_type="image/png", size=10, sha256="ab", s3_key="k",
            ),
            events.TaskSucceeded(prompt_id="p"),
        )
    )
    assert s is not None
    assert (s.status, s.attempt, s.endpoint, s.prompt_id) == ("succeeded", 1, "e:1", "p")
    assert s.progress == {"value": 3, "max": 20, "node": "3"}
    assert s.end_seq == 6 and s.webhook == "pending" and s.finished_at == T0 + timedelta(seconds=6)
    view = task_state.to_view(s)
    assert view["outputs"][0]["s3_key"] == "k" and "kind" not in view["outputs"][0]
    assert view["comfyui_task_id"] == "p" and view["finished_at"].endswith("Z")


def test_first_final_wins_and_late_events_change_nothing() -> None:
    s = task_state.replay(
        stream(
            SUB,
            events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
            events.TaskFailed(code="comfyui_execution_error", message="boom", node_id="2", node_type="ImageBlur"),
            events.TaskSucceeded(prompt_id="p"),
            events.TaskProgressed(prompt_id="p", value=1, max=2),
        )
    )
    assert s is not None and s.status == "failed" and s.end_seq == 3
    assert s.error == {"code": "comfyui_execution_error", "message": "boom", "node_id": "2", "node_type": "ImageBlur"}


def test_requeue_then_new_attempt_ignores_old_prompt() -> None:
    s = task_state.replay(
        stream(
            NOHOOK,
            events.TaskDispatched(endpoint="a:1", prompt_id="p1", attempt=1),
            events.TaskRequeued(endpoint="a:1", prompt_id="p1", reason="endpoint_lost"),
            events.TaskDispatched(endpoint="b:1", prompt_id="p2", attempt=2),
            events.TaskProgressed(prompt_id="p1", value=1, max=2),
        )
    )
    assert s is not None
    assert (s.status, s.endpoint, s.prompt_id, s.attempt) == ("dispatched", "b:1", "p2", 2)
    assert s.past_prompt_ids == ["p1"] and s.progress is None and s.webhook is None


def test_cancel_while_storing_ends_cancelled() -> None:
    s = task_state.replay(
        stream(
            SUB,
            events.TaskDispatched(endpoint="a:1", prompt_id="p", attempt=1),
            events.TaskCancelRequested(),
            events.TaskSucceeded(prompt_id="p"),
        )
    )
    assert s is not None and s.status == "cancelled" and s.end_type == "task.cancelled"


def test_webhook_lifecycle() -> None:
    base = [SUB, events.TaskFailed(code="c", message="m")]
    s = task_state.replay(stream(*base, events.WebhookAttempted(webhook_id="w", attempt=1, status_code=500, retry_in_s=1.0)))
    assert s is not None and s.webhook == "pending" and s.webhook_attempts == 1
    s = task_state.replay(stream(*base, events.WebhookDead(webhook_id="w", attempts=8)))
    assert s is not None and s.webhook == "dead"
    s = task_state.replay(stream(*base, events.WebhookDead(webhook_id="w", attempts=8), events.WebhookRedeliveryRequested()))
    assert s is not None and s.webhook == "pending" and s.end_seq == 2
    s = task_state.replay(stream(*base, events.WebhookDelivered(webhook_id="w", attempt=1, status_code=200)))
    assert s is not None and s.webhook == "delivered"


def test_stream_must_be_gapless_and_start_with_submitted() -> None:
    evs = stream(SUB, events.TaskStarted(prompt_id="p"))
    with pytest.raises(errors.FleetError):
        task_state.replay([evs[1]])
    with pytest.raises(errors.FleetError):
        task_state.replay([evs[0], StoredEvent(task_id="t1", seq=3, event=events.TaskStarted(prompt_id="p"), at=T0)])


def test_decode_roundtrip_for_every_event_type() -> None:
    samples = {
        cls: cls(**{f: _sample(t) for f, t in cls.__annotations__.items() if not f.isupper()})
        for cls in events.REGISTRY.values()
    }
    for cls, ev in samples.items():
        assert events.decode(cls.TYPE, cls.SCHEMA_VERSION, ev.payload()) == ev
    with pytest.raises(errors.FleetError):
        events.decode("task.nope", 1, {})


def _sample(annotation: str) -> object:
    if annotation.startswith("int"):
        return 1
    if annotation.startswith("float"):
        return 1.5
    if annotation.startswith("dict"):
        return {"a": 1}
    if annotation.startswith("list"):
        return [{"a": 1}]
    if annotation.startswith("Any"):
        return None
    return "x"


def test_a_task_recorded_before_tenants_reads_as_tenant_default() -> None:
    """Rolling upgrade: a task.submitted payload without `tenant` (as the release before
    tenants wrote it) and a read-model state without it both read as tenant `default`."""
    from comfy_fleet.log import event_log

    old_payload = {
        "workflow": "solid", "workflow_version": "v1", "params": {}, "prompt": {},
        "client_task_id": "c1", "callback_url": None, "priority": 0, "request_hash": "h",
        "origin": "tasks", "inputs": [], "required_labels": [],
    }
    ev = events.decode("task.submitted", 1, old_payload)
    assert isinstance(ev, events.TaskSubmitted) and ev.tenant == "default"
    state = task_state.apply(None, "t", 1, T0, ev)
    assert state.tenant == "default" and task_state.to_view(state)["tenant"] == "default"
    old_row = event_log.state_to_json(state)
    del old_row["tenant"]
    assert event_log.state_from_json(old_row).tenant == "default"
    new = events.TaskSubmitted(**{**old_payload, "tenant": "acme"})
    assert events.decode("task.submitted", 1, new.payload()) == new
    assert task_state.apply(None, "t", 1, T0, new).tenant == "acme"
