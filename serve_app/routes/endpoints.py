"""/endpoints: the fleet's ComfyUI endpoints; adding and draining them at run time."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app import commands, schemas
from serve_app.models import endpoints as models
from serve_app.models import errors as error_answers
from serve_app.responses import JSON
from serve_app.routes import context

#: Every route here reads or changes the fleet: admin keys only (403 `forbidden` to a tenant's).
router = APIRouter(tags=["endpoints"], dependencies=[Depends(context.admin_only)])


@router.get(
    "/endpoints",
    summary="The ComfyUI endpoints",
    operation_id="listEndpoints",
    response_model=list[models.Endpoint],
    responses=error_answers.answers(*error_answers.AUTH, 403, 503),
)
async def list_endpoints(request: Request) -> Response:
    return JSON(await context.services(request).router.endpoint_statuses())


@router.post(
    "/endpoints",
    status_code=201,
    summary="Add a ComfyUI endpoint at run time",
    operation_id="addEndpoint",
    response_model=models.EndpointAdded,
    responses=error_answers.answers(*error_answers.AUTH, 403, *error_answers.BODY, 503),
)
async def add_endpoint(body: schemas.AddEndpoint, request: Request) -> Response:
    added = await commands.add_endpoint(context.services(request), body.endpoint, body.labels)
    return JSON(added, status_code=201)


@router.delete(
    "/endpoints/{endpoint}",
    status_code=202,
    summary="Drain and remove an endpoint",
    operation_id="removeEndpoint",
    response_model=models.EndpointRemoval,
    responses=error_answers.answers(
        *error_answers.AUTH, 403, 404, 503, examples=error_answers.NO_ENDPOINT
    ),
)
async def remove_endpoint(endpoint: str, request: Request) -> Response:
    removed = await commands.remove_endpoint(context.services(request), endpoint)
    return JSON(removed, status_code=202)
