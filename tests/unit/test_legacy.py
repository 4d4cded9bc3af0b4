"""The original ComfyUI-server route's record and webhook body (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comfy_fleet.log import events, task_state

from comfy_fleet import storage
from comfy_fleet.log.events import StoredEvent
from comfy_fleet import legacy_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUB = events.TaskSubmitted(
    workflow="text2img",
    workflow_version="1",
    params={"text": "a cat"},
    prompt={},
    client_task_id="order-7",
    callback_url="http://127.0.0.1:9/cb",
    request_hash="h",
    origin="legacy",
)
DISPATCHED = events.TaskDispatched(endpoint="e:1", prompt_id="p1", attempt=1)


def out(index: int, name: str, subfolder: str = "") -> events.TaskOutputStored:
    return events.TaskOutputStored(
        prompt_id="p1",
        index=index,
        node_id="9",
        filename=name,
        subfolder=subfolder,
        kind="images",
        content_type="image/png",
        size=3,
        sha256="ab",
        s3_key=f"tasks/t1/{index:03d}-{name}",
    )


def fold(*evs: events.Event) -> task_state.TaskState:
    state = task_state.replay(
        StoredEvent(task_id="t1", seq=i, event=e, at=T0 + timedelta(seconds=i))
        for i, e in enumerate(evs, 1)
    )
    assert state is not None
    return state


def test_record_at_submit_has_every_field_and_error_code_zero() -> None:
    rec = legacy_record.record(fold(SUB))
    assert tuple(rec) == legacy_record.RECORD_FIELDS
    assert rec == {
        "id": "t1",
        "client_task_id": "order-7",
        "client_callback_url": "http://127.0.0.1:9/cb",
        "comfyui_task_id": None,
        "comfyui_filepath": None,
        "s3_key": None,
        "error_code": 0,
    }


def test_record_of_a_success_names_the_first_output() -> None:
    rec = legacy_record.record(
        fold(
            SUB,
            DISPATCHED,
            out(0, "a_00001_.png", "fleet"),
            out(1, "b.png"),
            events.TaskSucceeded(prompt_id="p1"),
        )
    )
    assert rec["comfyui_task_id"] == "p1"
    assert rec["s3_key"] == "tasks/t1/000-a_00001_.png"
    assert rec["comfyui_filepath"] == "fleet/a_00001_.png"
    assert rec["error_code"] == 0


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("storage_failed", 2),
        ("output_fetch_failed", 3),
        ("comfyui_prompt_rejected", 1),
        ("endpoint_lost", 1),
        ("comfyui_execution_error", 10),
        ("unsafe_output_name", 10),
    ],
)
def test_error_code_mapping(code: str, expected: int) -> None:
    state = fold(SUB, DISPATCHED, events.TaskFailed(code=code, message="m", prompt_id="p1"))
    assert legacy_record.record(state)["error_code"] == expected


def test_cancelled_is_other() -> None:
    assert legacy_record.error_code(fold(SUB, events.TaskCancelled(where="router"))) == legacy_record.OTHER


def test_storage_failure_names_the_kept_file_but_no_s3_key() -> None:
    failure = {
        "code": "storage_failed",
        "message": "S3 down",
        "filename": "a_00001_.png",
        "fallback_path": "/f/tasks/t1/000-a_00001_.png",
        "s3_key": "tasks/t1/000-a_00001_.png",
    }
    state = fold(
        SUB,
        DISPATCHED,
        events.TaskFailed(
            code="storage_failed", message="S3 down", prompt_id="p1", details={"outputs": [failure]}
        ),
    )
    rec = legacy_record.record(state)
    assert rec["error_code"] == 2 and rec["s3_key"] is None
    assert rec["comfyui_filepath"] == "a_00001_.png"


async def test_webhook_body_is_the_record_plus_the_task() -> None:
    store = storage.InMemoryBlobStore()
    state = fold(SUB, DISPATCHED, out(0, "a.png"), events.TaskSucceeded(prompt_id="p1"))
    body = await legacy_record.webhook_body(state, store, 60)
    assert set(body) == {*legacy_record.RECORD_FIELDS, "task"}
    assert body["task"]["task_id"] == "t1" and body["task"]["status"] == "succeeded"
    assert body["task"]["outputs"][0]["url"].startswith("memory://")
    assert body["s3_key"] == body["task"]["outputs"][0]["s3_key"]
