"""Task state as a pure fold of the task's events.

`evolve(state, stored)` is the only code that changes a TaskState (`apply` is the same fold with
the envelope's fields as arguments); `replay(events)` folds a whole stream. The API's views, the
read model and the actors' in-memory state all come from it.
A stream that skips a seq fails loudly (a corrupt or out-of-order read must not yield a state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comfy_fleet import errors

from comfy_fleet.log import cancel, events

from comfy_fleet.delivery import ids

#: API statuses. `queued`: waiting in the router (or requeued); `dispatched`: sent to a ComfyUI;
#: `running`: ComfyUI executes it; the last three are final.
QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})

#: The error code of a task whose outputs could not be stored (kept in the fallback folder).
STORAGE_FAILED = "storage_failed"

#: The tenant of a task recorded before tenants existed (and of an admin's task naming none).
DEFAULT_TENANT = "default"

#: Webhook delivery states of a finished task with a callback.
WEBHOOK_PENDING, WEBHOOK_DELIVERED, WEBHOOK_DEAD = "pending", "delivered", "dead"


@dataclass
class TaskState:
    task_id: str
    seq: int
    workflow: str
    workflow_version: str
    params: dict[str, Any]
    prompt: dict[str, Any]
    client_task_id: str | None
    callback_url: str | None
    priority: int
    request_hash: str
    origin: str
    inputs: list[dict[str, Any]]
    required_labels: list[str]
    created_at: datetime
    updated_at: datetime
    status: str = QUEUED
    attempt: int = 0
    endpoint: str | None = None
    prompt_id: str | None = None
    progress: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None
    #: seq of the final event: `webhook-id` derives from it, so repeats of one end share it.
    end_seq: int | None = None
    end_type: str | None = None
    cancel_requested: bool = False
    webhook: str | None = None
    webhook_attempts: int = 0
    #: whose task it is; `default` for a task (or a read-model row) from before tenants existed
    tenant: str = DEFAULT_TENANT
    #: prompt_ids of earlier attempts (a late completion of one is never run twice to the client).
    past_prompt_ids: list[str] = field(default_factory=list)
    #: webhook-ids of ends that a later end replaced (`task.outputs_recovered`): a late record of
    #: a try of one of them must not count for the current end.
    past_webhook_ids: list[str] = field(default_factory=list)
    #: the batch the task belongs to (POST /batches), else None.
    batch_id: str | None = None
    #: the seed params whose value was drawn, not given (a rerun draws them afresh)
    seeds_drawn: list[str] = field(default_factory=list)
    #: the task this one reruns, else None
    rerun_of: str | None = None
    #: models given by URL (`events.TaskSubmitted.models`)
    models: list[dict[str, Any]] = field(default_factory=list)
    #: model files given by name it needs on its endpoint (`events.TaskSubmitted.model_files`)
    model_files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def copy(self) -> TaskState:
        return dataclasses.replace(
            self,
            outputs=list(self.outputs),
            past_prompt_ids=list(self.past_prompt_ids),
            past_webhook_ids=list(self.past_webhook_ids),
        )


def evolve(
    state: TaskState | None, stored: events.StoredEvent, *, in_place: bool = False
) -> TaskState:
    """Apply one stored event to the state; returns a new state (the input is not changed,
    unless `in_place`, which rebuilds use: a fold that owns its state need not copy it)."""
    return apply(state, stored.task_id, stored.seq, stored.at, stored.event, in_place=in_place)


def apply(
    state: TaskState | None,
    task_id: str,
    seq: int,
    at: datetime,
    ev: events.Event,
    *,
    in_place: bool = False,
) -> TaskState:
    """`evolve` with the envelope's fields as arguments: the fold itself, for a caller that has
    them at hand (a rebuild, per event of the log, builds no `StoredEvent`).

    Long because it is one `match` with a case per event type: every transition and every
    late-event rule ("a final task changes no more") reads in one place."""
    if state is None:
        if not isinstance(ev, events.TaskSubmitted):
            raise errors.FleetError(f"task {task_id}: stream starts with {ev.TYPE}")
        if seq != 1:
            raise errors.FleetError(f"task {task_id}: first event has seq {seq}")
        return TaskState(
            task_id=task_id,
            seq=1,
            workflow=ev.workflow,
            workflow_version=ev.workflow_version,
            params=ev.params,
            prompt=ev.prompt,
            client_task_id=ev.client_task_id,
            callback_url=ev.callback_url,
            priority=ev.priority,
            request_hash=ev.request_hash,
            origin=ev.origin,
            inputs=list(ev.inputs),
            required_labels=list(ev.required_labels),
            batch_id=ev.batch_id,
            seeds_drawn=list(ev.seeds_drawn),
            rerun_of=ev.rerun_of,
            models=list(ev.models),
            model_files=list(ev.model_files),
            tenant=ev.tenant,
            created_at=at,
            updated_at=at,
        )
    if seq != state.seq + 1:
        raise errors.FleetError(f"task {state.task_id}: event seq {seq} follows {state.seq}")
    s = state if in_place else state.copy()
    s.seq = seq
    s.updated_at = at
    final = s.is_final

    match ev:
        case events.TaskDispatched() if not final:
            if s.prompt_id and s.prompt_id != ev.prompt_id:
                s.past_prompt_ids.append(s.prompt_id)
            s.status, s.endpoint, s.prompt_id, s.attempt = DISPATCHED, ev.endpoint, ev.prompt_id, ev.attempt
            s.progress, s.outputs = None, []
        case events.TaskStarted() if not final and ev.prompt_id == s.prompt_id:
            s.status = RUNNING
        case events.TaskProgressed() if not final and ev.prompt_id == s.prompt_id:
            s.status = RUNNING
            s.progress = {"value": ev.value, "max": ev.max, "node": ev.node}
        case events.TaskOutputStored() if ev.prompt_id == s.prompt_id:
            s.outputs.append(
                {
                    "node_id": ev.node_id,
                    "filename": ev.filename,
                    "subfolder": ev.subfolder,
                    "kind": ev.kind,
                    "content_type": ev.content_type,
                    "size": ev.size,
                    "sha256": ev.sha256,
                    "s3_key": ev.s3_key,
                    **({"fallback_path": ev.fallback_path} if ev.fallback_path else {}),
                }
            )
        case events.TaskSucceeded() if not final:
            # A cancel that arrived while outputs were being stored wins: the task ends
            # cancelled (with its outputs) and no success webhook goes out.
            _finish(s, seq, at, CANCELLED if cancel.ends_cancelled(s) else SUCCEEDED)
        case events.TaskFailed() if not final:
            s.error = {
                "code": ev.code,
                "message": ev.message,
                **({"node_id": ev.node_id} if ev.node_id else {}),
                **({"node_type": ev.node_type} if ev.node_type else {}),
                **({"details": ev.details} if ev.details is not None else {}),
            }
            _finish(s, seq, at, FAILED)
        case events.TaskOutputsRecovered() if (
            s.status == FAILED
            and (s.error or {}).get("code") == STORAGE_FAILED
            and ev.prompt_id == s.prompt_id
        ):
            # The failure was only "S3 did not answer"; now every output is there, so the task
            # gets the end it would have had. The failure stays in the log as a fact.
            s.outputs = [dict(o) for o in ev.outputs]
            s.error, s.webhook_attempts = None, 0
            if s.end_seq is not None:
                s.past_webhook_ids.append(ids.webhook_id(s.task_id, s.end_seq))
            _finish(s, seq, at, CANCELLED if cancel.ends_cancelled(s) else SUCCEEDED)
        case events.TaskRequeued() if not final:
            s.status, s.progress, s.outputs = QUEUED, None, []
            if s.prompt_id:
                s.past_prompt_ids.append(s.prompt_id)
            s.prompt_id, s.endpoint = None, None
        case events.TaskModelFetched():
            pass  # a fact for the timeline (GET /tasks/{id}/events): the state is unchanged
        case events.TaskCancelRequested():
            s.cancel_requested = True
        case events.TaskCancelled() if not final:
            _finish(s, seq, at, CANCELLED)
        case events.WebhookAttempted() | events.WebhookDelivered() | events.WebhookDead() if (
            ev.webhook_id in s.past_webhook_ids
        ):
            pass  # a try of an end that was replaced: kept in the log, counts for nothing
        case events.WebhookAttempted():
            s.webhook_attempts = max(s.webhook_attempts, ev.attempt)
        case events.WebhookDelivered():
            s.webhook_attempts = max(s.webhook_attempts, ev.attempt)
            s.webhook = WEBHOOK_DELIVERED
        case events.WebhookDead():
            s.webhook = WEBHOOK_DEAD
        case events.WebhookRedeliveryRequested() if s.is_final and s.callback_url:
            s.webhook, s.webhook_attempts = WEBHOOK_PENDING, 0
        case _:
            # Events that arrive after the end (a late progress, a second final) are kept in
            # the log as facts but change nothing: the first final event wins.
            pass
    return s


def _finish(s: TaskState, seq: int, at: datetime, status: str) -> None:
    s.status = status
    s.finished_at = at
    s.end_seq = seq
    s.end_type = f"task.{status}"
    s.webhook = WEBHOOK_PENDING if s.callback_url else None


def replay(stream: Iterable[events.StoredEvent]) -> TaskState | None:
    """Fold a whole stream (in seq order) into its state; None for an empty stream."""
    state: TaskState | None = None
    for stored in stream:
        state = evolve(state, stored)
    return state


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def input_view(spec: dict[str, Any]) -> dict[str, Any]:
    """One image input as the API shows it: the bytes received, kept in S3. A task recorded
    before inputs were kept shows its parameter only (its staged copy is gone)."""
    if "sha256" not in spec:
        return {"param": spec.get("param"), "s3_key": None, "sha256": None,
                "content_type": None, "size": None}
    return {k: spec.get(k) for k in ("param", "s3_key", "sha256", "content_type", "size")}


def to_view(s: TaskState) -> dict[str, Any]:
    """The task as the API shows it (docs/api.md §3), without presigned URLs (added per read)."""
    return {
        "task_id": s.task_id,
        "client_task_id": s.client_task_id,
        "tenant": s.tenant,
        "workflow": s.workflow,
        "workflow_version": s.workflow_version,
        "status": s.status,
        "callback_url": s.callback_url,
        "priority": s.priority,
        "attempt": s.attempt,
        "endpoint": s.endpoint,
        "comfyui_task_id": s.prompt_id,
        "progress": s.progress,
        "outputs": [
            {k: v for k, v in o.items() if k not in ("subfolder", "kind")} for o in s.outputs
        ],
        "models": [
            {k: m[k] for k in ("param", "sha256", "s3_key", "filename") if k in m}
            for m in s.models
        ],
        "model_files": [
            {"param": m.get("param"), "node_id": m.get("node_id"), "folder": m["folder"],
             "filename": m["filename"]}
            for m in s.model_files
        ],
        "error": s.error,
        "webhook": s.webhook,
        "batch_id": s.batch_id,
        "inputs": [input_view(i) for i in s.inputs],
        "rerun_of": s.rerun_of,
        "created_at": _iso(s.created_at),
        "updated_at": _iso(s.updated_at),
        "finished_at": _iso(s.finished_at),
    }
