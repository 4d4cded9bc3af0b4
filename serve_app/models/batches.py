"""Batches and sweeps (`POST /batches`, `GET /batches/{batch_id}`, `POST /batches/{id}/cancel`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SubmitBatch(BaseModel):
    """POST /batches: either `tasks` or `workflow` + `params` + `sweep`."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[Any] | None = Field(
        default=None,
        description="1 to 1,000 POST /tasks bodies naming a workflow, recorded together (raw "
        "graphs and models given by URL are refused in a batch)",
    )
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
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
