"""The answer of the original ComfyUI-server route, `POST {ROUTE_PREFIX}` (`serve_app.legacy`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from serve_app.models.tasks import Task


class LegacyAnswer(BaseModel):
    """That project's record of the task, beside the task."""

    id: str = Field(description="the task_id")
    client_task_id: str | None
    client_callback_url: str | None
    comfyui_task_id: str | None
    comfyui_filepath: str | None = Field(description="subfolder/filename of the first output")
    s3_key: str | None = Field(description="S3 key of the first stored output")
    error_code: int = Field(
        description="0 success (or not ended), 1 could not queue, 2 storage failed, "
        "3 could not fetch the output, 10 other"
    )
    task: Task
