"""The record of the original ComfyUI-server route (docs/legacy-api.md), pure: what its
clients get in the answer to `POST {ROUTE_PREFIX}` (serve_app/routes/legacy.py) and, when the task ends,
in the webhook (the same record, filled in, with our task under `"task"`).

The record's fields are the prototype's `comfyui_records` row: `id`, `client_task_id`,
`client_callback_url`, `comfyui_task_id`, `comfyui_filepath`, `s3_key`, `error_code`.
"""

from __future__ import annotations

from typing import Any

from comfy_fleet import views
from comfy_fleet.log import task_state
from comfy_fleet.log.task_state import TaskState
from comfy_fleet import storage

#: The prototype's ErrorCode values.
SUCCESS, QUEUE_FAILED, STORAGE_FAILED, OUTPUT_FETCH_FAILED, OTHER = 0, 1, 2, 3, 10

#: Our error codes (task.error.code) → the prototype's error_code. Anything else is OTHER.
ERROR_CODES: dict[str, int] = {
    "storage_failed": STORAGE_FAILED,
    "output_fetch_failed": OUTPUT_FETCH_FAILED,
    "comfyui_prompt_rejected": QUEUE_FAILED,
    "endpoint_lost": QUEUE_FAILED,
}

RECORD_FIELDS = (
    "id",
    "client_task_id",
    "client_callback_url",
    "comfyui_task_id",
    "comfyui_filepath",
    "s3_key",
    "error_code",
)


def error_code(state: TaskState) -> int:
    """The prototype's error_code of a task: 0 while it runs (its column default) and on success;
    cancelled counts as OTHER (the prototype had no cancel)."""
    if state.status == task_state.FAILED:
        return ERROR_CODES.get(str((state.error or {}).get("code")), OTHER)
    if state.status == task_state.CANCELLED:
        return OTHER
    return SUCCESS


def _comfyui_path(subfolder: str | None, filename: str) -> str:
    return f"{subfolder}/{filename}" if subfolder else filename


def record(state: TaskState) -> dict[str, Any]:
    """The prototype's record of a task, as far as it is known (pure).

    `s3_key` and `comfyui_filepath` describe the first output (the prototype stored one image per
    task): `s3_key` only once it is in S3; `comfyui_filepath` is the file's path on the ComfyUI
    host (`subfolder/filename`), also for an output that could not be stored.
    """
    s3_key: str | None = None
    path: str | None = None
    stored = [o for o in state.outputs if not o.get("fallback_path")]
    if stored:
        first = stored[0]
        s3_key = first.get("s3_key")
        path = _comfyui_path(first.get("subfolder"), str(first.get("filename")))
    elif state.outputs:
        path = _comfyui_path(
            state.outputs[0].get("subfolder"), str(state.outputs[0].get("filename"))
        )
    else:
        details = (state.error or {}).get("details")
        failed = details.get("outputs") if isinstance(details, dict) else None
        if isinstance(failed, list) and failed and isinstance(failed[0], dict):
            name = failed[0].get("filename")
            path = str(name) if name else None
    return {
        "id": state.task_id,
        "client_task_id": state.client_task_id,
        "client_callback_url": state.callback_url,
        "comfyui_task_id": state.prompt_id,
        "comfyui_filepath": path,
        "s3_key": s3_key,
        "error_code": error_code(state),
    }


async def webhook_body(
    state: TaskState, store: storage.BlobStore | None, expires_s: int
) -> dict[str, Any]:
    """The webhook of a legacy task: the record, filled in, plus `"task"` (the dispatcher adds
    `"type"`)."""
    return {**record(state), "task": await views.task_view(state, store, expires_s)}
