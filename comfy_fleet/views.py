"""The task as clients see it: the API's JSON and the webhook body, with fresh presigned URLs.

Shared by the ingress and the webhook dispatcher so a receiver sees exactly what GET shows.
"""

from __future__ import annotations

from typing import Any

from comfy_fleet import storage

from comfy_fleet.log import task_state
from comfy_fleet.log.task_state import TaskState


async def task_view(
    state: TaskState, store: storage.BlobStore | None, expires_s: int,
    queue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`task_state.to_view` plus a presigned GET URL per stored output and kept input (made
    at each read, so it is always fresh; a URL is a local signature, no request to S3), and
    `queue` (its position and ETA, CONTRACT §7.6) when given and the task has not ended."""
    view = task_state.to_view(state)
    if queue is not None and not state.is_final:
        view["queue"] = queue_view(queue)
    for out in view["outputs"]:
        if store is not None and out.get("s3_key") and not out.get("fallback_path"):
            out["url"] = await store.presign_get(out["s3_key"], expires_s)
        else:
            out["url"] = None
    for kept in view["inputs"]:
        kept["url"] = None
        if store is not None and kept.get("s3_key"):
            kept["url"] = await store.presign_get(kept["s3_key"], expires_s)
    return view


def queue_view(place: dict[str, Any]) -> dict[str, Any]:
    """`{"position", "eta_s"}` of the router's answer for one task (nothing else of it)."""
    return {"position": int(place["position"]), "eta_s": float(place["eta_s"])}


def event_view(stored: Any) -> dict[str, Any]:
    """One event as GET /tasks/{id}/events shows it: {seq, type, at, data}."""
    return {
        "seq": stored.seq,
        "type": stored.event.TYPE,
        "at": stored.at.isoformat().replace("+00:00", "Z"),
        "data": stored.event.payload(),
    }


async def webhook_body(state: TaskState, store: storage.BlobStore | None, expires_s: int) -> dict[str, Any]:
    """docs/api.md §5: {"type": "task.<end>", "task": <the task>} (type is set by the sender)."""
    return {"task": await task_view(state, store, expires_s)}
