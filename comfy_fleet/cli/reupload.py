"""`python -m comfy_fleet.cli.reupload`: store in S3 what an outage left in DEFAULT_FAILED_IMAGE_PATH, and
complete those tasks.

When S3 does not answer after its retries, the endpoint keeps an output at
`DEFAULT_FAILED_IMAGE_PATH/<s3_key>` and the task fails with `storage_failed`, each such output
listed in `error.details.outputs` with its `fallback_path`, `s3_key`, `sha256`. This command, run
on the host that holds the folder once S3 answers again:

1. finds the tasks that have files in the folder (`tasks/<task_id>/…`, the s3_key layout);
2. for a task that failed with `storage_failed` and whose every failed output was kept: checks
   each kept file against its recorded sha256, puts it under its s3_key, then records one
   `task.outputs_recovered` event with the task's whole output list; the task ends succeeded
   (a new end, so its webhook goes out again, as `task.succeeded`);
3. deletes the kept files only after that event is recorded (a crash in between re-uploads the
   same bytes under the same keys next time: idempotent).

A task whose failure included an output that was not kept (e.g. it could not be fetched from
ComfyUI) cannot be completed: its files are uploaded nowhere and left in place, and it is named
in the report. Exit status: 0 when every task found was completed (or nothing was found), 1 when
some were left, 2 when S3 or the database did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_fleet import errors

from comfy_fleet.log import events, task_state

from comfy_fleet import storage
from comfy_fleet.config import Settings
from comfy_fleet.log.event_log import EventLog
from comfy_fleet.log.task_state import TaskState

log = logging.getLogger("comfy_fleet.reupload")

_KEY_INDEX = re.compile(r"^(\d+)-")
#: Appends retried through concurrent writers (a webhook try being recorded) before giving up.
APPEND_RETRIES = 8


@dataclass
class Report:
    """What a run did: task ids completed, left (with the reason), files uploaded."""

    completed: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    uploaded: int = 0
    removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "left": self.left,
            "uploaded": self.uploaded,
            "removed": self.removed,
        }


# --- pure parts ---------------------------------------------------------------------------------


def kept_tasks(root: Path) -> dict[str, list[Path]]:
    """Task id → the files kept for it under `root` (laid out as s3_keys: tasks/<id>/<file>)."""
    found: dict[str, list[Path]] = {}
    base = root / "tasks"
    if not base.is_dir():
        return found
    for task_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        files = sorted(p for p in task_dir.rglob("*") if p.is_file())
        if files:
            found[task_dir.name] = files
    return found


def output_index(s3_key: str) -> int:
    """The node-order index in an output key (`tasks/<id>/<NNN>-<name>`); large if absent."""
    match = _KEY_INDEX.match(s3_key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else sys.maxsize


def failed_outputs(state: TaskState) -> list[dict[str, Any]]:
    """The failure's per-output entries (`error.details.outputs`), or []."""
    details = (state.error or {}).get("details")
    outputs = details.get("outputs") if isinstance(details, dict) else None
    return [o for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else []


def recovery_problem(state: TaskState) -> str | None:
    """Why the task cannot be completed from the folder, or None when it can."""
    if (
        state.status != task_state.FAILED
        or (state.error or {}).get("code") != task_state.STORAGE_FAILED
    ):
        return f"status {state.status}" + (
            f" ({(state.error or {}).get('code')})" if state.error else ""
        )
    failures = failed_outputs(state)
    if not failures:
        return "the failure lists no kept outputs"
    for f in failures:
        if (
            f.get("code") != task_state.STORAGE_FAILED
            or not f.get("fallback_path")
            or not f.get("s3_key")
        ):
            return f"output {f.get('filename')!r} was not kept ({f.get('code')})"
    return None


def recovered_output(failure: dict[str, Any]) -> dict[str, Any]:
    """A failure entry as an entry of the task's `outputs` (the fold's shape)."""
    return {
        "node_id": str(failure.get("node_id") or ""),
        "filename": str(failure.get("filename") or ""),
        "subfolder": str(failure.get("subfolder") or ""),
        "kind": str(failure.get("kind") or ""),
        "content_type": str(failure.get("content_type") or storage.OCTET_STREAM),
        "size": int(failure.get("size") or 0),
        "sha256": str(failure.get("sha256") or ""),
        "s3_key": str(failure["s3_key"]),
    }


def merged_outputs(state: TaskState, failures: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's whole output list after recovery: stored ones and recovered ones, node order."""
    have = {o.get("s3_key") for o in state.outputs}
    merged = [dict(o) for o in state.outputs]
    merged += [recovered_output(f) for f in failures if f.get("s3_key") not in have]
    return sorted(merged, key=lambda o: output_index(str(o.get("s3_key") or "")))


# --- the command --------------------------------------------------------------------------------


def _kept_file(failure: dict[str, Any], root: Path) -> Path:
    recorded = Path(str(failure["fallback_path"]))
    return recorded if recorded.is_file() else root / str(failure["s3_key"])


async def recover_task(
    log_: EventLog,
    store: storage.BlobStore,
    task_id: str,
    files: list[Path],
    root: Path,
    report: Report,
) -> None:
    try:
        state = await log_.get(task_id)
    except errors.TaskNotFound:
        report.left[task_id] = "no such task in the log"
        return
    if state.status == task_state.SUCCEEDED or state.status == task_state.CANCELLED:
        # Completed by an earlier run that stopped before deleting: delete what S3 now has.
        keys = {o.get("s3_key") for o in state.outputs}
        for path in files:
            key = path.relative_to(root).as_posix()
            if key in keys and await store.exists(key):
                path.unlink(missing_ok=True)
                report.removed += 1
        _prune(root, task_id)
        return
    problem = recovery_problem(state)
    if problem is not None:
        report.left[task_id] = problem
        return
    failures = failed_outputs(state)
    for failure in failures:
        path = _kept_file(failure, root)
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.left[task_id] = f"kept file {path} unreadable: {exc.strerror or exc}"
            return
        if failure.get("sha256") and storage.sha256_hex(data) != failure["sha256"]:
            report.left[task_id] = f"kept file {path} does not match its recorded sha256"
            return
        content_type = str(
            failure.get("content_type") or storage.content_type_for(path.name, data[:64])
        )
        await store.put(str(failure["s3_key"]), data, content_type)
        report.uploaded += 1
    event = events.TaskOutputsRecovered(
        prompt_id=state.prompt_id or "",
        outputs=merged_outputs(state, failures),
        recovered=[str(f["s3_key"]) for f in failures],
    )
    for _ in range(APPEND_RETRIES):
        try:
            await log_.append(task_id, state.seq, [event], state)
            break
        except errors.ConcurrencyConflict:
            state = await log_.get(task_id)
            if recovery_problem(state) is not None:
                report.left[task_id] = f"changed meanwhile: {recovery_problem(state)}"
                return
    else:
        report.left[task_id] = "could not record the recovery (concurrent writers)"
        return
    report.completed.append(task_id)
    # Only now, with the recovery recorded, may the kept copies go.
    for failure in failures:
        _kept_file(failure, root).unlink(missing_ok=True)
        report.removed += 1
    _prune(root, task_id)


def _prune(root: Path, task_id: str) -> None:
    folder = root / "tasks" / task_id
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


async def wait_for_store(store: storage.BlobStore, wait_s: float) -> None:
    """Return once S3 answers; raise StorageUnavailable after `wait_s` seconds of silence."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await store.ping()
            return
        except errors.StorageUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


async def run(
    settings: Settings,
    *,
    log_: EventLog | None = None,
    store: storage.BlobStore | None = None,
    wait_s: float = 0.0,
) -> Report:
    """Recover every task with files under `settings.default_failed_image_path`."""
    root = Path(settings.default_failed_image_path)
    report = Report()
    found = kept_tasks(root)
    if not found:
        return report
    own_log = own_store = False
    if log_ is None:
        from comfy_fleet.log.postgres import PostgresEventLog

        log_ = await PostgresEventLog.connect(settings.database_url or "", max_size=2)
        own_log = True
    if store is None:
        store = await storage.S3BlobStore.from_settings(settings)
        own_store = True
    try:
        await wait_for_store(store, wait_s)
        for task_id, files in found.items():
            await recover_task(log_, store, task_id, files, root, report)
    finally:
        if own_log:
            await log_.close()
        if own_store:
            await store.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfy_fleet.cli.reupload",
        description=(
            "Upload outputs kept in DEFAULT_FAILED_IMAGE_PATH to S3 and complete their tasks."
        ),
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for S3 to answer before giving up (default: try once)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        report = asyncio.run(run(settings, wait_s=args.wait))
    except errors.ConfigError as exc:
        print(f"reupload: configuration error: {exc}", file=sys.stderr)
        return 2
    except errors.Unavailable as exc:
        print(
            f"reupload: {exc.message}; stopped, run again later (repeating is safe)",
            file=sys.stderr,
        )
        return 2
    for task_id in report.completed:
        print(f"completed {task_id}")
    for task_id, why in report.left.items():
        print(f"left {task_id}: {why}")
    print(
        f"reupload: {len(report.completed)} task(s) completed, {len(report.left)} left, "
        f"{report.uploaded} file(s) uploaded, {report.removed} kept file(s) removed"
    )
    return 1 if report.left else 0


if __name__ == "__main__":
    sys.exit(main())
