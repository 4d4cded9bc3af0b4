"""POST {ROUTE_PREFIX}: the original ComfyUI-server route, kept for its clients (the record it
answers with is `comfy_fleet.legacy_record`'s)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from comfy_fleet import legacy_record
from comfy_fleet.policies import access
from serve_app import commands, schemas
from serve_app.models import errors as error_answers
from serve_app.models import legacy as models
from serve_app.routes import context

router = APIRouter(tags=["legacy"])


@router.post(
    "",
    summary="The original ComfyUI-server API (kept for its clients)",
    operation_id="legacySubmit",
    response_model=models.LegacyAnswer,
    responses=error_answers.answers(*error_answers.AUTH, *error_answers.BODY, 409, 429, 503),
)
async def legacy_submit(body: schemas.LegacySubmit, request: Request) -> Response:
    """Run `service_type` with `params`; answer 200 with the record and the task. Same refusals
    as POST /tasks (unknown workflow, invalid params or images, forbidden callback, overload,
    client_task_id reused for another request), with the API's error body. The task is the
    tenant's of the key (an admin's: `default`)."""
    s = context.services(request)
    state, _created = await commands.submit(
        s,
        workflow_name=body.service_type,
        params=body.params,
        client_task_id=body.client_task_id,
        callback_url=body.client_callback_url,
        priority=0,
        tenant=access.submit_tenant(context.principal(request)),
        origin="legacy",
    )
    view = await context.task_view(s, state)
    return JSONResponse({**legacy_record.record(state), "task": view}, status_code=200)
