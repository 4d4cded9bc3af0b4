"""/batches: submit a batch of tasks (a list or a sweep) in one transaction, read it with live
counts, cancel it (docs/api.md, "Batches and sweeps")."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from comfy_fleet import errors
from serve_app import batches
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter(tags=["batches"])

#: A tenant's name (docs/api.md, "Keys, roles and tenants").
TENANT_NAME = re.compile(r"[a-z0-9_-]{1,64}")


class SubmitBatch(BaseModel):
    """POST /batches: either `tasks` or `workflow` + `params` + `sweep`."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[Any] | None = Field(
        default=None, description="1 to 1,000 POST /tasks bodies, recorded together"
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
    tenant: str | None = Field(default=None, max_length=64, description="An admin key's choice")


class BatchCounts(BaseModel):
    queued: int = 0
    dispatched: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class Batch(BaseModel):
    """A batch as the API shows it."""

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


def key_tenant(request: Request) -> str | None:
    """The tenant of the request's key; None for an admin key (or no keys at all)."""
    tenant: str | None = getattr(context.principal(request), "tenant", None)
    return tenant


def _forbidden(message: str) -> errors.FleetError:
    # errors.Forbidden (403 `forbidden`) comes with tenant keys.
    cls: type[errors.FleetError] = getattr(errors, "Forbidden", errors.FleetError)
    return cls(message)


def batch_tenant(request: Request, named: str | None) -> str:
    """Whose batch this is: a tenant key's own tenant; an admin's choice, else `default`."""
    own = key_tenant(request)
    if own is not None:
        if named is not None and named != own:
            raise _forbidden("a tenant key may not name another tenant")
        return own
    if named is None:
        return "default"
    if TENANT_NAME.fullmatch(named) is None:
        raise errors.InvalidRequest(
            "tenant: a tenant name is [a-z0-9_-]{1,64}", {"loc": ["body", "tenant"]}
        )
    return named


@router.post(
    "/batches", status_code=202, summary="Submit a batch of tasks or a sweep",
    operation_id="createBatch", responses={202: {"model": Batch}, 200: {"model": Batch}},
)
async def post_batch(body: SubmitBatch, request: Request) -> Response:
    s = context.services(request)
    req = batches.BatchRequest(
        tenant=batch_tenant(request, body.tenant), tasks=body.tasks, workflow=body.workflow,
        params=body.params, sweep=body.sweep, client_batch_id=body.client_batch_id,
        callback_url=body.callback_url, priority=body.priority,
    )
    state, created = await batches.submit(s, req)
    return JSON(await batches.view(s, state), status_code=202 if created else 200)


@router.get(
    "/batches/{batch_id}", summary="A batch, with its tasks' counts now",
    operation_id="getBatch", responses={200: {"model": Batch}},
)
async def get_batch(batch_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await batches.get(s, batch_id, key_tenant(request))
    return JSON(await batches.view(s, state))


@router.post(
    "/batches/{batch_id}/cancel", status_code=202,
    summary="Cancel every task of the batch not yet ended",
    operation_id="cancelBatch", responses={202: {"model": Batch}},
)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await batches.cancel(s, await batches.get(s, batch_id, key_tenant(request)))
    return JSON(await batches.view(s, state), status_code=202)
