"""Every fact about a task, as a frozen event. This module is the one place that documents them.

An event names what happened, in the past tense. The stored row is an envelope
(`event_log.StoredEvent`) around the payload (`Event.payload()`); `TYPE` is the stable stored
name, never an import path. Stored events are never rewritten: a payload change bumps
`SCHEMA_VERSION` and adds an upcaster in `UPCASTERS` keyed by `(type, from_version)`.

| type                        | emitted by       | meaning |
|-----------------------------|------------------|---------|
| task.submitted              | ingress          | the request was accepted and durably recorded (the 202) |
| task.model_fetched          | ingress/endpoint | a model given by URL was fetched for it: into the bucket (ingress) or onto its ComfyUI (endpoint) |
| task.dispatched             | endpoint actor   | a prompt_id was minted for this attempt and is about to be POSTed |
| task.started                | endpoint actor   | ComfyUI began executing the prompt |
| task.progressed             | endpoint actor   | sampler progress (rate-limited) |
| task.output_stored          | endpoint actor   | one output file is in S3 (or the fallback folder) |
| task.succeeded              | endpoint actor   | all outputs stored; final |
| task.failed                 | any              | the task ended in error (code, message, node); final |
| task.requeued               | endpoint/router  | the attempt was lost; the task waits for another dispatch |
| task.outputs_recovered      | reupload command | outputs kept in the fallback folder are now in S3; a `storage_failed` task ends succeeded |
| task.cancel_requested       | ingress          | a client asked to cancel |
| task.cancelled              | router/endpoint  | the task ended cancelled; final |
| webhook.attempted           | webhook actor    | one delivery try failed (status or error, next delay) |
| webhook.delivered           | webhook actor    | a try got a 2xx; the end is delivered |
| webhook.dead                | webhook actor    | the last try failed; no more automatic tries |
| webhook.redelivery_requested| ingress          | POST /tasks/{id}/webhook: deliver the end again |

A batch (POST /batches) is a stream of its own in `batch_events` (same envelope, keyed by
`batch_id`); its tasks are ordinary task streams whose `task.submitted` carries `batch_id`, all
recorded in the one transaction that records `batch.submitted`. Its state is a pure fold
(`comfy_fleet/batches/batch_state.py`); its counts are its tasks' statuses.

| type (batch stream)         | emitted by       | meaning |
|-----------------------------|------------------|---------|
| batch.submitted             | ingress          | the batch and all its tasks were recorded (the 202) |
| batch.cancel_requested      | ingress          | a client asked to cancel the batch's open tasks |
| batch.completed             | webhook actor    | every task has ended; once (the stream's seq decides) |
| webhook.*                   | webhook actor    | tries of the batch's `batch.completed` webhook |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from comfy_fleet import errors


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events."""

    TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    def payload(self) -> dict[str, Any]:
        """The stored payload: the event's fields. Shallow: the nested params and prompt are
        the event's own (`dataclasses.asdict` deep-copied them on every append; the log's
        encoder and the API's views only read them)."""
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class TaskSubmitted(Event):
    """A task was accepted. `params` are resolved (defaults applied, random seeds drawn; an
    image parameter reads "<image>": its bytes are in S3, see `inputs`). The prompt sent to
    ComfyUI is rendered at dispatch from the stored workflow version (`workflow_versions`,
    keyed by `workflow` + `workflow_version`) and these params, so every dispatch of the task
    runs exactly the same prompt. A task recorded before versions were stored carries its
    rendered graph in `prompt` instead, and runs that."""

    TYPE: ClassVar[str] = "task.submitted"
    workflow: str
    workflow_version: str
    params: dict[str, Any]
    #: the rendered graph (tasks recorded before versions were stored); {} to render at dispatch
    prompt: dict[str, Any] = field(default_factory=dict)
    client_task_id: str | None = None
    callback_url: str | None = None
    priority: int = 0
    #: sha256 of the canonical request body: same client_task_id + same hash = same request.
    request_hash: str = ""
    #: "tasks" for POST /tasks, "legacy" for the original ComfyUI-server route.
    origin: str = "tasks"
    #: image inputs: [{"param", "node", "field", "filename" (its name on the ComfyUI host),
    #: "s3_key", "sha256", "content_type", "size" (the bytes received, kept as the task's
    #: record), "upload_key" (the PNG uploaded at dispatch)}]. Tasks recorded before inputs
    #: were kept have only "s3_key" (the PNG, deleted after the task) and no sha256.
    inputs: list[dict[str, Any]] = field(default_factory=list)
    required_labels: list[str] = field(default_factory=list)
    #: the batch the task was submitted in (POST /batches), else None.
    batch_id: str | None = None
    #: the seed params whose value was drawn ("random"), not given: a rerun draws them afresh.
    seeds_drawn: list[str] = field(default_factory=list)
    #: the task this one reruns (POST /tasks/{id}/rerun), else None.
    rerun_of: str | None = None
    #: Whose task it is (docs/api.md §7.1). A task recorded before tenants existed has no
    #: `tenant` in its payload and decodes as tenant `default`.
    tenant: str = "default"
    #: models given by URL, pulled onto the endpoint at dispatch:
    #: [{"param", "sha256", "s3_key", "filename", "folder"}] (absent in events recorded before).
    models: list[dict[str, Any]] = field(default_factory=list)
    #: model files by name its endpoint must hold (routed by its `file:` labels; absent before):
    #: [{"param" (a raw graph's: "node_id"), "folder", "filename"}]
    model_files: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class TaskModelFetched(Event):
    """A model given by URL was fetched for this task, into the bucket (``where="bucket"``) or
    onto the ComfyUI of ``endpoint`` (``where="endpoint"``), taking ``seconds``."""

    TYPE: ClassVar[str] = "task.model_fetched"
    sha256: str
    bytes: int
    seconds: float
    where: str = "bucket"
    endpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class TaskDispatched(Event):
    """The endpoint minted `prompt_id` for `attempt` and recorded it before POST /prompt, so a
    crash between the two is reconciled by looking the id up in /queue and /history."""

    TYPE: ClassVar[str] = "task.dispatched"
    endpoint: str
    prompt_id: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class TaskPromptQueued(Event):
    """ComfyUI answered 200 to POST /prompt. Not emitted: decoded only, should a log hold it."""

    TYPE: ClassVar[str] = "task.prompt_queued"
    prompt_id: str
    number: float | None = None


@dataclass(frozen=True, kw_only=True)
class TaskStarted(Event):
    """ComfyUI began executing the prompt (execution_start)."""

    TYPE: ClassVar[str] = "task.started"
    prompt_id: str


@dataclass(frozen=True, kw_only=True)
class TaskProgressed(Event):
    """Progress of the running node; rate-limited by the endpoint actor."""

    TYPE: ClassVar[str] = "task.progressed"
    prompt_id: str
    value: int
    max: int
    node: str | None = None


@dataclass(frozen=True, kw_only=True)
class TaskOutputStored(Event):
    """One output file reported by ComfyUI is stored under `s3_key` (or, when S3 was down past
    its retries, kept at `fallback_path`)."""

    TYPE: ClassVar[str] = "task.output_stored"
    prompt_id: str
    index: int
    node_id: str
    filename: str
    subfolder: str
    kind: str  # images | gifs | video | audio | ...
    content_type: str
    size: int
    sha256: str
    s3_key: str
    fallback_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class TaskSucceeded(Event):
    """Every output is stored: the task ended successfully."""

    TYPE: ClassVar[str] = "task.succeeded"
    prompt_id: str


@dataclass(frozen=True, kw_only=True)
class TaskFailed(Event):
    """The task ended in error. `code` is the API's snake_case code."""

    TYPE: ClassVar[str] = "task.failed"
    code: str
    message: str
    prompt_id: str | None = None
    node_id: str | None = None
    node_type: str | None = None
    details: Any = None


@dataclass(frozen=True, kw_only=True)
class TaskRequeued(Event):
    """The attempt on `endpoint` was lost (ComfyUI restarted, the prompt vanished); the task
    waits in the router for attempt + 1."""

    TYPE: ClassVar[str] = "task.requeued"
    endpoint: str
    prompt_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class TaskOutputsRecovered(Event):
    """`python -m comfy_fleet.cli.reupload` stored in S3 every output that a `storage_failed` failure kept in
    DEFAULT_FAILED_IMAGE_PATH. `outputs` is the task's whole output list after recovery, in node
    order (the outputs stored before plus the recovered ones). The one exception to "the first
    final event wins": it turns that failure, and only that one, into the end the task would
    have had (succeeded, or cancelled if a cancel came while storing), with a new webhook."""

    TYPE: ClassVar[str] = "task.outputs_recovered"
    prompt_id: str
    outputs: list[dict[str, Any]]
    #: s3_keys of the outputs this event recovered (a subset of `outputs`).
    recovered: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class TaskCancelRequested(Event):
    """A client asked to cancel the task."""

    TYPE: ClassVar[str] = "task.cancel_requested"


@dataclass(frozen=True, kw_only=True)
class TaskCancelled(Event):
    """The task ended cancelled; `where` says where the cancel found it."""

    TYPE: ClassVar[str] = "task.cancelled"
    where: str


@dataclass(frozen=True, kw_only=True)
class WebhookAttempted(Event):
    """One webhook try did not deliver; `retry_in_s` is None when it was the last."""

    TYPE: ClassVar[str] = "webhook.attempted"
    webhook_id: str
    attempt: int
    status_code: int | None = None
    error: str | None = None
    retry_in_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookDelivered(Event):
    """A webhook try got a 2xx."""

    TYPE: ClassVar[str] = "webhook.delivered"
    webhook_id: str
    attempt: int
    status_code: int


@dataclass(frozen=True, kw_only=True)
class WebhookDead(Event):
    """The last try failed; only POST /tasks/{id}/webhook delivers again."""

    TYPE: ClassVar[str] = "webhook.dead"
    webhook_id: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class WebhookRedeliveryRequested(Event):
    """A client asked for the task's end to be delivered again (same webhook-id)."""

    TYPE: ClassVar[str] = "webhook.redelivery_requested"


@dataclass(frozen=True, kw_only=True)
class BatchSubmitted(Event):
    """A batch was accepted: its tasks (`task_ids`, in the batch's order) were recorded in the
    same transaction. `callback_url` gets only the batch's `batch.completed` webhook."""

    TYPE: ClassVar[str] = "batch.submitted"
    tenant: str
    task_ids: list[str]
    client_batch_id: str | None = None
    callback_url: str | None = None
    priority: int = 0
    #: sha256 of the canonical request body: same client_batch_id + same hash = same request.
    request_hash: str = ""
    #: "tasks" (a list of task bodies) or "sweep" (a cartesian product over params).
    kind: str = "tasks"


@dataclass(frozen=True, kw_only=True)
class BatchCancelRequested(Event):
    """A client asked to cancel the batch: each of its tasks not yet ended is cancelled."""

    TYPE: ClassVar[str] = "batch.cancel_requested"


@dataclass(frozen=True, kw_only=True)
class BatchCompleted(Event):
    """Every task of the batch has ended. `finished_at` (ISO-8601) is when its last task
    ended; `counts` its tasks' statuses then."""

    TYPE: ClassVar[str] = "batch.completed"
    finished_at: str
    counts: dict[str, int] = field(default_factory=dict)


REGISTRY: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        TaskSubmitted,
        TaskModelFetched,
        TaskDispatched,
        TaskPromptQueued,
        TaskStarted,
        TaskProgressed,
        TaskOutputStored,
        TaskSucceeded,
        TaskFailed,
        TaskRequeued,
        TaskOutputsRecovered,
        TaskCancelRequested,
        TaskCancelled,
        WebhookAttempted,
        WebhookDelivered,
        WebhookDead,
        WebhookRedeliveryRequested,
        BatchSubmitted,
        BatchCancelRequested,
        BatchCompleted,
    )
}

FINAL_TYPES = frozenset({TaskSucceeded.TYPE, TaskFailed.TYPE, TaskCancelled.TYPE})

#: (type, stored version) -> function turning that payload into the next version's.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class StoredEvent:
    """The envelope of one event in the log: where it stands and when it was recorded."""

    task_id: str
    seq: int
    event: Event
    at: datetime
    #: global order of the log; 0 until stored.
    position: int = 0

    @property
    def type(self) -> str:
        return self.event.TYPE


def decode(type_: str, schema_version: int, payload: dict[str, Any]) -> Event:
    """Stored (type, version, payload) → the current event class, upcasting old versions.

    Rebuilds call this once per event of the log, so the common case is cheap: a payload of
    the current version with exactly the class's fields (what `payload()` writes) fills the
    frozen instance's attributes directly, as `__init__` would (events have no `__post_init__`,
    checked below), without the `__init__` call. The caller's dict is never kept or changed."""
    try:
        cls, names = _CLASSES[type_]
    except KeyError:
        raise errors.FleetError(f"unknown event type {type_!r}") from None
    data = payload
    if schema_version < cls.SCHEMA_VERSION:
        data = dict(payload)  # an upcaster may change its argument: never the caller's dict
        version = schema_version
        while version < cls.SCHEMA_VERSION:
            data = UPCASTERS[(type_, version)](data)
            version += 1
    if data.keys() == names:
        event = _new(cls)
        event.__dict__.update(data)
        return event
    if data.keys() <= names:
        return cls(**data)
    return cls(**{k: v for k, v in data.items() if k in names})


_new = object.__new__

#: type -> (class, its field names), for decode.
_CLASSES: dict[str, tuple[type[Event], frozenset[str]]] = {
    t: (cls, frozenset(f.name for f in dataclasses.fields(cls))) for t, cls in REGISTRY.items()
}

# `decode` skips `__init__` for whole payloads: that is only `__init__` when it does nothing else.
if any(hasattr(cls, "__post_init__") for cls in REGISTRY.values()):
    raise TypeError("an event has __post_init__: decode() must call __init__ for it")
