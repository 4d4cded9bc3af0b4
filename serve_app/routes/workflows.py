"""/workflows: the served workflows (with their parameters as JSON Schema), and reloading them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve_app import commands, workflow_versions
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter()


@router.get("/workflows", summary="The served workflows and their parameters (JSON Schema)")
async def list_workflows(request: Request) -> Response:
    s = context.services(request)
    limit = s.settings.max_string_length
    return JSON([w.describe(max_string_length=limit) for w in s.registry.workflows()])


@router.get("/workflows/{name}", summary="One workflow")
async def get_workflow(name: str, request: Request) -> Response:
    s = context.services(request)
    return JSON(s.registry.get(name).describe(max_string_length=s.settings.max_string_length))


@router.get(
    "/workflows/{name}/versions", summary="The versions of a workflow the service holds",
    operation_id="listWorkflowVersions",
)
async def list_versions(name: str, request: Request) -> Response:
    s = context.services(request)
    return JSON(await workflow_versions.book(s).listed(name))


@router.get(
    "/workflows/{name}/versions/{version}",
    summary="One version of a workflow: its graph and manifest", operation_id="getWorkflowVersion",
)
async def get_version(name: str, version: str, request: Request) -> Response:
    s = context.services(request)
    return JSON(await workflow_versions.book(s).one(name, version))


@router.post("/workflows/reload", summary="Pick up added, changed and removed workflows")
async def reload_workflows(request: Request) -> Response:
    return JSON(await commands.reload_workflows(context.services(request)), status_code=200)
