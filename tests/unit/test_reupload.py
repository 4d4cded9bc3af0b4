"""Recovering outputs kept in the fallback folder: the fold's `task.outputs_recovered` and the
command's logic, with the in-memory log and store and a real folder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from comfy_fleet import errors

from comfy_fleet.log import event_log, events, task_state

from comfy_fleet.cli import reupload

from comfy_fleet import storage
from comfy_fleet.log.events import StoredEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUB = events.TaskSubmitted(
    workflow="solid",
    workflow_version="1",
    params={},
    prompt={},
    callback_url="http://x/h",
    request_hash="h",
)
DISPATCHED = events.TaskDispatched(endpoint="e:1", prompt_id="p1", attempt=1)


def stored_output(index: int, task_id: str = "t1") -> events.TaskOutputStored:
    name = f"s_{index:05d}_.png"
    return events.TaskOutputStored(
        prompt_id="p1",
        index=index,
        node_id="2",
        filename=name,
        subfolder="",
        kind="images",
        content_type="image/png",
        size=1,
        sha256="x",
        s3_key=storage.output_key(task_id, index, name),
    )


def failure(
    index: int, data: bytes, root: Path, task_id: str = "t1", code: str = "storage_failed"
) -> dict:
    name = f"s_{index:05d}_.png"
    key = storage.output_key(task_id, index, name)
    path = root / key
    if code == "storage_failed":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {
        "code": code,
        "message": "S3 down",
        "filename": name,
        "node_id": "2",
        "content_type": "image/png",
        "size": len(data),
        "sha256": storage.sha256_hex(data),
        **({"fallback_path": str(path), "s3_key": key} if code == "storage_failed" else {}),
    }


def fold(*evs: events.Event) -> task_state.TaskState:
    state = task_state.replay(
        StoredEvent(task_id="t1", seq=i, event=e, at=T0 + timedelta(seconds=i))
        for i, e in enumerate(evs, 1)
    )
    assert state is not None
    return state


# --- the fold -----------------------------------------------------------------------------------


def test_recovery_turns_a_storage_failure_into_success_with_a_new_end(tmp_path: Path) -> None:
    f = failure(1, b"png", tmp_path)
    failed = fold(
        SUB,
        DISPATCHED,
        stored_output(0),
        events.TaskFailed(
            code="storage_failed", message="S3 down", prompt_id="p1", details={"outputs": [f]}
        ),
        events.WebhookDelivered(webhook_id="w", attempt=2, status_code=200),
    )
    assert failed.status == "failed" and failed.webhook == "delivered"
    merged = reupload.merged_outputs(failed, [f])
    state = fold(
        SUB,
        DISPATCHED,
        stored_output(0),
        events.TaskFailed(
            code="storage_failed", message="S3 down", prompt_id="p1", details={"outputs": [f]}
        ),
        events.WebhookDelivered(webhook_id="w", attempt=2, status_code=200),
        events.TaskOutputsRecovered(prompt_id="p1", outputs=merged, recovered=[f["s3_key"]]),
    )
    assert state.status == "succeeded" and state.error is None
    assert state.end_seq == 6 and state.end_type == "task.succeeded"
    assert state.webhook == "pending" and state.webhook_attempts == 0
    assert [o["s3_key"] for o in state.outputs] == [stored_output(0).s3_key, f["s3_key"]]


@pytest.mark.parametrize(
    "ending",
    [
        events.TaskFailed(code="comfyui_execution_error", message="boom", prompt_id="p1"),
        events.TaskSucceeded(prompt_id="p1"),
        events.TaskCancelled(where="router"),
    ],
    ids=["other-failure", "succeeded", "cancelled"],
)
def test_recovery_changes_nothing_else(ending: events.Event) -> None:
    before = fold(SUB, DISPATCHED, ending)
    after = fold(
        SUB,
        DISPATCHED,
        ending,
        events.TaskOutputsRecovered(prompt_id="p1", outputs=[{"s3_key": "k"}]),
    )
    assert (after.status, after.end_seq, after.outputs, after.error) == (
        before.status,
        before.end_seq,
        before.outputs,
        before.error,
    )


def test_recovery_of_another_attempt_changes_nothing() -> None:
    fail = events.TaskFailed(code="storage_failed", message="m", prompt_id="p1")
    after = fold(SUB, DISPATCHED, fail, events.TaskOutputsRecovered(prompt_id="other", outputs=[]))
    assert after.status == "failed" and after.error is not None


def test_recovery_after_a_cancel_while_storing_ends_cancelled() -> None:
    fail = events.TaskFailed(code="storage_failed", message="m", prompt_id="p1")
    state = fold(
        SUB,
        DISPATCHED,
        events.TaskCancelRequested(),
        fail,
        events.TaskOutputsRecovered(prompt_id="p1", outputs=[]),
    )
    assert state.status == "cancelled"


# --- pure helpers -------------------------------------------------------------------------------


def test_kept_tasks_and_output_index(tmp_path: Path) -> None:
    assert reupload.kept_tasks(tmp_path / "missing") == {}
    (tmp_path / "tasks" / "a").mkdir(parents=True)
    (tmp_path / "tasks" / "b").mkdir(parents=True)
    (tmp_path / "tasks" / "b" / "003-x.png").write_bytes(b"1")
    assert reupload.kept_tasks(tmp_path) == {"b": [tmp_path / "tasks" / "b" / "003-x.png"]}
    assert reupload.output_index("tasks/b/003-x.png") == 3
    assert reupload.output_index("odd") > 10**6


def test_recovery_problem(tmp_path: Path) -> None:
    ok = fold(
        SUB,
        DISPATCHED,
        events.TaskFailed(
            code="storage_failed",
            message="m",
            prompt_id="p1",
            details={"outputs": [failure(0, b"1", tmp_path)]},
        ),
    )
    assert reupload.recovery_problem(ok) is None
    mixed = fold(
        SUB,
        DISPATCHED,
        events.TaskFailed(
            code="storage_failed",
            message="m",
            prompt_id="p1",
            details={
                "outputs": [
                    failure(0, b"1", tmp_path),
                    failure(1, b"2", tmp_path, code="output_fetch_failed"),
                ]
            },
        ),
    )
    assert "not kept" in (reupload.recovery_problem(mixed) or "")
    assert "succeeded" in (
        reupload.recovery_problem(fold(SUB, DISPATCHED, events.TaskSucceeded(prompt_id="p1"))) or ""
    )


# --- the command against the in-memory log and store --------------------------------------------


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "failed"
        self.log = event_log.InMemoryEventLog()
        self.store = storage.InMemoryBlobStore()
        from comfy_fleet.config import Settings

        self.settings = Settings.from_env(
            {"DEFAULT_FAILED_IMAGE_PATH": str(self.root)}, dotenv=tmp_path / "none"
        )

    async def failed_task(
        self, task_id: str, payloads: list[bytes], stored_first: bool = True
    ) -> list[dict]:
        fails = [failure(i + 1, p, self.root, task_id) for i, p in enumerate(payloads)]
        evs: list[events.Event] = [SUB, DISPATCHED]
        if stored_first:
            evs.append(stored_output(0, task_id))
        evs.append(
            events.TaskFailed(
                code="storage_failed", message="S3 down", prompt_id="p1", details={"outputs": fails}
            )
        )
        await self.log.append(task_id, 0, evs)
        return fails


async def test_run_uploads_completes_and_empties_the_folder(tmp_path: Path) -> None:
    env = Env(tmp_path)
    fails = await env.failed_task("t1", [b"one", b"two"])
    report = await reupload.run(env.settings, log_=env.log, store=env.store)
    assert report.completed == ["t1"] and report.left == {} and report.uploaded == 2
    for f, data in zip(fails, [b"one", b"two"], strict=True):
        assert env.store.objects[f["s3_key"]] == (data, "image/png")
    state = await env.log.get("t1")
    assert state.status == "succeeded" and len(state.outputs) == 3
    types = [e.type for e in await env.log.read("t1")]
    assert types[-2:] == ["task.failed", "task.outputs_recovered"]
    assert reupload.kept_tasks(env.root) == {}
    # A second run finds nothing to do.
    again = await reupload.run(env.settings, log_=env.log, store=env.store)
    assert again.completed == [] and again.uploaded == 0


async def test_store_still_down_changes_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    await env.failed_task("t1", [b"one"])
    env.store.available = False
    with pytest.raises(errors.StorageUnavailable):
        await reupload.run(env.settings, log_=env.log, store=env.store, wait_s=0.2)
    assert (await env.log.get("t1")).status == "failed"
    assert list(reupload.kept_tasks(env.root)) == ["t1"]


async def test_a_tampered_file_is_left(tmp_path: Path) -> None:
    env = Env(tmp_path)
    fails = await env.failed_task("t1", [b"one"])
    Path(fails[0]["fallback_path"]).write_bytes(b"changed")
    report = await reupload.run(env.settings, log_=env.log, store=env.store)
    assert "sha256" in report.left["t1"] and env.store.objects == {}
    assert (await env.log.get("t1")).status == "failed"


async def test_files_of_an_already_recovered_task_are_removed_once_s3_has_them(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    fails = await env.failed_task("t1", [b"one"])
    await reupload.run(env.settings, log_=env.log, store=env.store)
    # A crash after the event but before the delete leaves the file: the next run removes it.
    path = Path(fails[0]["fallback_path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"one")
    report = await reupload.run(env.settings, log_=env.log, store=env.store)
    assert report.removed == 1 and not path.exists() and report.left == {}


def test_main_without_files_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEFAULT_FAILED_IMAGE_PATH", str(tmp_path / "nothing"))
    assert reupload.main([]) == 0
    assert "0 task(s) completed" in capsys.readouterr().out


def test_a_late_webhook_record_of_the_replaced_end_does_not_count_for_the_new_one() -> None:
    from comfy_fleet.delivery import webhooks

    fail = events.TaskFailed(code="storage_failed", message="m", prompt_id="p1")
    old_id = webhooks.webhook_id("t1", 3)
    state = fold(
        SUB,
        DISPATCHED,
        fail,
        events.TaskOutputsRecovered(prompt_id="p1", outputs=[]),
        # The dispatcher recorded its delivery of the failure after the recovery.
        events.WebhookDelivered(webhook_id=old_id, attempt=1, status_code=200),
        events.WebhookDead(webhook_id=old_id, attempts=3),
    )
    assert state.status == "succeeded" and state.end_seq == 4
    assert state.webhook == "pending" and state.past_webhook_ids == [old_id]
    new_id = webhooks.webhook_id("t1", 4)
    done = fold(
        SUB,
        DISPATCHED,
        fail,
        events.TaskOutputsRecovered(prompt_id="p1", outputs=[]),
        events.WebhookDelivered(webhook_id=new_id, attempt=1, status_code=200),
    )
    assert done.webhook == "delivered"
