"""Batches and sweeps (`POST /batches`, `GET /batches/{batch_id}`, `POST /batches/{id}/cancel`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

#: What `tasks` holds, as documented: POST /tasks bodies. The route takes the items as they come
#: and checks each one itself (serve_app/batch_items.py), so that a bad one is refused with
#: `details.index` naming it rather than a pydantic location.
_TASK_LIST = WithJsonSchema({
    "type": "array", "items": {"$ref": "#/components/schemas/SubmitTask"},
    "minItems": 1, "maxItems": 1000,
})


class SubmitBatch(BaseModel):
    """POST /batches: either `tasks` or `workflow` + `params` + `sweep`."""

    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[Any], _TASK_LIST] | None = Field(
        default=None,
        description="1 to 1,000 POST /tasks bodies, recorded together: each may be anything "
        "POST /tasks takes (a workflow with its params and a pinned `workflow_version`, models "
        "given by URL, or a raw `graph` with its `files`) and is checked as POST /tasks checks "
        "it; a bad one refuses the batch, `details.index` naming it",
    )
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
    workflow_version: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="With `workflow` and `sweep`: run this version of the workflow (GET "
        "/workflows/{name}/versions) in every task of the sweep; a version the service does "
        "not hold answers 409 `workflow_version_unknown`",
    )
    params: dict[str, Any] | None = Field(default=None, description="The sweep's base params")
    sweep: dict[str, Any] | None = Field(
        default=None,
        description="{param: [values]}: one task per element of the cartesian product (at most "
        "1,000), the last key varying fastest; `{index}` in a string param becomes the task's "
        "0-based index in the batch",
    )
    client_batch_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Your id for this batch; the same id with the same body is answered once",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Gets one batch.completed webhook at the end"
    )
    priority: int | None = Field(
        default=None, ge=-1_000_000, le=1_000_000,
        description="Each task's priority unless a task of the list sets its own",
    )
    # Checked by policies.access (a tenant key naming another tenant is 403, not 422).
    tenant: str | None = Field(
        default=None, max_length=64,
        description="The tenant of the batch and its tasks: an admin key may name one (else "
        "`default`); a tenant key's batches are its tenant's",
    )


class BatchCounts(BaseModel):
    """The batch's tasks by status, as they are now."""

    queued: int = 0
    dispatched: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class Batch(BaseModel):
    """A batch as the API and its webhook show it."""

    batch_id: str
    client_batch_id: str | None
    tenant: str
    status: str = Field(description="running | completed")
    counts: BatchCounts
    task_ids: list[str]
    callback_url: str | None
    priority: int
    cancel_requested: bool
    webhook: str | None
    created_at: str
    finished_at: str | None
