"""A task, a page of tasks, and a task's events, as `GET /tasks…` answers them
(`comfy_fleet.views.task_view`, `comfy_fleet.views.event_view`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "dispatched", "running", "succeeded", "failed", "cancelled"]

_EXAMPLE_TASK: dict[str, Any] = {
    "task_id": "0b7e3a52-5a0e-4a55-9a51-0d3c8f7f4a11",
    "client_task_id": "order-1234",
    "workflow": "solid",
    "status": "succeeded",
    "callback_url": None,
    "priority": 0,
    "attempt": 1,
    "endpoint": "127.0.0.1:8188",
    "comfyui_task_id": "5f1c6e0a-3a4d-4c51-b7a9-52d3a3c6b0de",
    "progress": {"value": 1, "max": 1, "node": "1"},
    "outputs": [
        {
            "node_id": "2",
            "filename": "solid_00001_.png",
            "content_type": "image/png",
            "size": 1983,
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "s3_key": "outputs/0b7e3a52-5a0e-4a55-9a51-0d3c8f7f4a11/2/solid_00001_.png",
            "url": "http://127.0.0.1:9000/comfy-fleet/outputs/…?X-Amz-Signature=…",
        }
    ],
    "error": None,
    "webhook": None,
    "created_at": "2026-12-07T07:00:00.000000Z",
    "updated_at": "2026-12-07T07:00:01.200000Z",
    "finished_at": "2026-12-07T07:00:01.200000Z",
}


class Progress(BaseModel):
    """The running node's progress, as ComfyUI last reported it."""

    value: int
    max: int
    node: str | None = Field(description="id of the node the progress is of")


class Output(BaseModel):
    """One file a ComfyUI output node produced, stored in S3 (or, when S3 was down past its
    retries, kept on disk at `fallback_path` and then without `url`)."""

    node_id: str
    filename: str
    content_type: str
    size: int = Field(description="bytes")
    sha256: str
    s3_key: str
    url: str | None = Field(description="a presigned GET URL, fresh at each read")
    fallback_path: str | None = Field(
        default=None, description="where the file is kept when it could not be stored in S3"
    )


class TaskInput(BaseModel):
    """One image input of the task, kept in S3 as the bytes the service received."""

    param: str | None = Field(description="the image parameter it was given for")
    s3_key: str | None = Field(description="null for a task recorded before inputs were kept")
    sha256: str | None = Field(description="of the bytes received")
    content_type: str | None
    size: int | None = Field(description="bytes")
    url: str | None = Field(description="a presigned GET URL, fresh at each read")


class TaskModel(BaseModel):
    """A model given by URL: kept in the bucket under `s3_key`, pulled onto the endpoint that
    runs the task under `filename` (in its parameter's model folder)."""

    param: str
    sha256: str
    s3_key: str
    filename: str


class TaskModelFile(BaseModel):
    """A model file given by name: the task runs only on an endpoint whose ComfyUI lists it in
    that folder (it waits, queued, while no connected endpoint does)."""

    param: str | None = Field(description="the model parameter it was given for")
    node_id: str | None = Field(default=None, description="a raw graph's node naming it")
    folder: str = Field(description="the ComfyUI model folder, e.g. loras")
    filename: str


class TaskError(BaseModel):
    """Why a task failed."""

    code: str = Field(description="snake_case, e.g. comfyui_execution_error")
    message: str
    node_id: str | None = Field(default=None, description="the failing node, when known")
    node_type: str | None = Field(default=None, description="its class, when known")
    details: Any = Field(default=None, description="more, by code (absent when none)")


class QueuePlace(BaseModel):
    """Where a task not ended stands in the fleet's queue (an estimate, CONTRACT §7.6)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"position": 3, "eta_s": 12.5}]})

    position: int = Field(
        ge=0,
        description="its place in the fleet's dispatch order, given its tenant's share: 1 = "
        "next (queued, or dispatched and still in ComfyUI's queue); 0 = running",
    )
    eta_s: float = Field(
        ge=0,
        description="estimated seconds until it starts (running: until it ends), from recent "
        "run times of its workflow and the connected endpoints",
    )


class Task(BaseModel):
    """A task as the API and its webhooks show it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_TASK]})

    task_id: str = Field(description="UUID given by the service")
    client_task_id: str | None
    workflow: str
    status: Status
    callback_url: str | None
    priority: int
    attempt: int = Field(description="dispatches so far (0 while first queued)")
    endpoint: str | None = Field(description="host:port of the ComfyUI it runs on")
    comfyui_task_id: str | None = Field(description="the prompt_id sent to ComfyUI")
    progress: Progress | None
    outputs: list[Output]
    models: list[TaskModel] = Field(default=[], description="models given by URL (§7.5)")
    model_files: list[TaskModelFile] = Field(
        default=[], description="model files given by name that its endpoint must hold (§7.5)"
    )
    error: TaskError | None
    webhook: Literal["pending", "delivered", "dead"] | None = Field(
        description="delivery of the end webhook; null without callback_url or before the end"
    )
    batch_id: str | None = Field(
        default=None, description="the batch it was submitted in (POST /batches), else null"
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    workflow_version: str | None = Field(
        default=None, description="the version of the workflow the task runs"
    )
    inputs: list[TaskInput] = Field(default_factory=list, description="its image inputs")
    rerun_of: str | None = Field(default=None, description="the task this one reruns")
    queue: QueuePlace | None = Field(
        default=None,
        description="GET /tasks/{task_id} of a task not ended: its queue position and ETA "
        "(absent when ended, and when no estimate could be had)",
    )


class TaskPage(BaseModel):
    """A page of tasks, newest first; pass `next_cursor` as `cursor` for the next one."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tasks": [_EXAMPLE_TASK], "next_cursor": None}]}
    )

    tasks: list[Task]
    next_cursor: str | None = Field(description="null on the last page")


class TaskEvent(BaseModel):
    """One recorded event of a task (also the `data:` of a stream's frame)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "seq": 1,
                    "type": "task.submitted",
                    "at": "2026-12-07T07:00:00.000000Z",
                    "data": {"workflow": "solid", "params": {"width": 64}},
                }
            ]
        }
    )

    seq: int = Field(description="1, 2, … in the task's order; the stream's `id:`")
    type: str = Field(
        description="task.submitted, task.model_fetched, task.dispatched, task.prompt_queued, task.started, "
        "task.progressed, task.output_stored, task.succeeded, task.failed, task.requeued, "
        "task.outputs_recovered, task.cancel_requested, task.cancelled, webhook.attempted, "
        "webhook.delivered, webhook.dead, webhook.redelivery_requested; more may be added"
    )
    at: datetime
    data: dict[str, Any]


class TaskPreview(BaseModel):
    """The `data:` of a stream's `event: preview` line (`?previews=true`): ComfyUI's latest
    latent preview of the running task. Not an event of the task: never recorded, no `id:`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg…"}]}
    )

    content_type: str = Field(description="the image's type: image/jpeg (latent previews) or image/png")
    data: str = Field(description="the image, base64")
