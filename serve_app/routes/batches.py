"""/batches: submit a batch of tasks (a list or a sweep) in one transaction, read it with live
counts, cancel it (docs/api.md, "Batches and sweeps")."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from comfy_fleet.policies import access
from serve_app import batches
from serve_app.models import batches as models
from serve_app.models import errors as error_answers
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter(tags=["batches"])

_NO_BATCH = {404: ("batch_not_found", "no batch 'x'")}


@router.post(
    "/batches", status_code=202, summary="Submit a batch of tasks or a sweep",
    operation_id="createBatch",
    response_model=models.Batch,
    response_description="The batch, recorded with all its tasks",
    responses={
        200: {
            "model": models.Batch,
            "description": "The batch already submitted with this `client_batch_id` and body "
            "(nothing new is started)",
        },
        **error_answers.answers(*error_answers.AUTH, 403, *error_answers.BODY, 409, 429, 503),
    },
)
async def post_batch(body: models.SubmitBatch, request: Request) -> Response:
    s = context.services(request)
    principal = context.principal(request)
    req = batches.BatchRequest(
        tenant=access.submit_tenant(principal, body.tenant),
        tasks=body.tasks, workflow=body.workflow, params=body.params, sweep=body.sweep,
        client_batch_id=body.client_batch_id, callback_url=body.callback_url,
        priority=body.priority, workflow_version=body.workflow_version, principal=principal,
    )
    state, created = await batches.submit(s, req)
    return JSON(await batches.view(s, state), status_code=202 if created else 200)


@router.get(
    "/batches/{batch_id}", summary="A batch, with its tasks' counts now",
    operation_id="getBatch",
    response_model=models.Batch,
    response_description="The batch, as it is now",
    responses=error_answers.answers(*error_answers.AUTH, 404, 503, examples=_NO_BATCH),
)
async def get_batch(batch_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await batches.get(s, batch_id, context.principal(request))
    return JSON(await batches.view(s, state))


@router.post(
    "/batches/{batch_id}/cancel", status_code=202,
    summary="Cancel every task of the batch not yet ended",
    operation_id="cancelBatch",
    response_model=models.Batch,
    response_description="The batch; its tasks not yet ended are being cancelled",
    responses=error_answers.answers(*error_answers.AUTH, 404, 503, examples=_NO_BATCH),
)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await batches.cancel(s, await batches.get(s, batch_id, context.principal(request)))
    return JSON(await batches.view(s, state), status_code=202)
