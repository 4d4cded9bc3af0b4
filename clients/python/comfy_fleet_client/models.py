"""Typed models of what the service answers (CONTRACT §3, §5, §7).

Every model accepts fields it does not know (kept, reachable as attributes and in
`model_dump()`), so a newer server never breaks an older client. Statuses are plain strings
for the same reason; the known ones are listed in `FINAL_STATUSES` and `TaskStatus`.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskStatus = Literal["queued", "dispatched", "running", "succeeded", "failed", "cancelled"]
#: The statuses a task never leaves.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: The stream events that end a task.
FINAL_EVENT_TYPES = frozenset({"task.succeeded", "task.failed", "task.cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Progress(_Model):
    value: int | float = 0
    max: int | float = 0
    node: str | None = None


class Output(_Model):
    """One stored output: `url` is a presigned GET URL, fresh at each read (None when the
    output could not be stored in S3 and was kept on the service's disk instead)."""

    node_id: str | None = None
    filename: str
    content_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    s3_key: str | None = None
    url: str | None = None


class TaskError(_Model):
    code: str
    message: str = ""
    node_id: str | None = None
    node_type: str | None = None


class QueueInfo(_Model):
    """Place in the fleet's dispatch order: 1 = next, 0 = running."""

    position: int | None = None
    eta_s: float | None = None


class Task(_Model):
    task_id: str
    workflow: str
    status: str
    client_task_id: str | None = None
    callback_url: str | None = None
    priority: int = 0
    attempt: int = 0
    endpoint: str | None = None
    comfyui_task_id: str | None = None
    progress: Progress | None = None
    outputs: list[Output] = Field(default_factory=list)
    error: TaskError | None = None
    webhook: str | None = None
    tenant: str | None = None
    batch_id: str | None = None
    workflow_version: str | None = None
    rerun_of: str | None = None
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    models: list[dict[str, Any]] = Field(default_factory=list)
    #: model files named by file name: `{"param", "folder", "filename"}` each
    model_files: list[dict[str, Any]] = Field(default_factory=list)
    queue: QueueInfo | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class TaskPage(_Model):
    tasks: list[Task] = Field(default_factory=list)
    next_cursor: str | None = None


class Event(_Model):
    """One recorded event of a task, as `GET /tasks/{id}/events` and the stream show it."""

    seq: int
    type: str
    at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES


class QueueUpdate(_Model):
    """`event: queue` on the stream (not recorded): the task's place and estimate now."""

    type: Literal["queue"] = "queue"
    position: int | None = None
    eta_s: float | None = None


class Preview(_Model):
    """`event: preview` on the stream (with `previews=True`): a latent preview image."""

    type: Literal["preview"] = "preview"
    content_type: str = "image/jpeg"
    data: str = ""

    @property
    def image(self) -> bytes:
        return base64.b64decode(self.data)


class StreamMessage(_Model):
    """A stream event of a kind this client does not know (kept, not dropped)."""

    type: str
    id: str | None = None
    data: Any = None


StreamEvent = Event | QueueUpdate | Preview | StreamMessage


class Batch(_Model):
    batch_id: str
    status: str
    client_batch_id: str | None = None
    tenant: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    task_ids: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status == "completed"


class Workflow(_Model):
    name: str
    description: str | None = None
    #: The JSON Schema of the workflow's `params` object.
    params: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    version: str | None = None

    def param_schema(self, name: str) -> dict[str, Any] | None:
        props = self.params.get("properties") or {}
        schema = props.get(name)
        return schema if isinstance(schema, dict) else None

    def is_image_param(self, name: str) -> bool:
        """True when the schema marks `name` as an image (base64, data: URL or http(s) URL)."""
        schema = self.param_schema(name)
        return schema is not None and is_image_schema(schema)

    @property
    def required(self) -> list[str]:
        return list(self.params.get("required") or [])


def is_image_schema(schema: dict[str, Any]) -> bool:
    """Whether a parameter's JSON Schema takes an image.

    Explicit marks first (`contentMediaType: image/*`, `format: image | data-url | binary`,
    an `x-…type` of `image`); failing those, the service's own description of image values
    ("… as a data: URL (data:image/…") on a string parameter.
    """
    media = schema.get("contentMediaType")
    if isinstance(media, str) and media.startswith("image/"):
        return True
    if schema.get("format") in ("image", "data-url", "binary"):
        return True
    for key, value in schema.items():
        if key.startswith("x-") and key.endswith("type") and value == "image":
            return True
    description = schema.get("description")
    return (
        schema.get("type") == "string"
        and isinstance(description, str)
        and "data:image/" in description
    )


class Endpoint(_Model):
    endpoint: str
    state: str
    queue_remaining: int | None = None
    inflight: int | None = None
    labels: list[str] = Field(default_factory=list)
    last_seen: datetime | str | None = None
    connected: bool | None = None
    models: list[Any] = Field(default_factory=list)
    #: how many files each model folder of its ComfyUI holds
    model_files: dict[str, int] | None = None


class WebhookEvent(_Model):
    """A verified webhook body: `task.<end>` carries `task`, `batch.completed` carries `batch`."""

    type: str
    task: Task | None = None
    batch: Batch | None = None
