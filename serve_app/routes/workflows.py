"""/workflows: the served workflows (with their parameters as JSON Schema), and reloading them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app import commands, workflow_versions
from serve_app.models import errors as error_answers
from serve_app.models import workflows as models
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter(tags=["workflows"])


@router.get(
    "/workflows",
    summary="The served workflows and their parameters (JSON Schema)",
    operation_id="listWorkflows",
    response_model=list[models.Workflow],
    responses=error_answers.answers(*error_answers.AUTH),
)
async def list_workflows(request: Request) -> Response:
    s = context.services(request)
    limit = s.settings.max_string_length
    return JSON([w.describe(max_string_length=limit) for w in s.registry.workflows()])


@router.get(
    "/workflows/{name}",
    summary="One workflow",
    operation_id="getWorkflow",
    response_model=models.Workflow,
    responses=error_answers.answers(
        *error_answers.AUTH, 404, examples=error_answers.NO_WORKFLOW
    ),
)
async def get_workflow(name: str, request: Request) -> Response:
    s = context.services(request)
    return JSON(s.registry.get(name).describe(max_string_length=s.settings.max_string_length))


@router.get(
    "/workflows/{name}/versions",
    summary="The versions of a workflow the service holds",
    operation_id="listWorkflowVersions",
    response_model=list[models.WorkflowVersion],
    responses=error_answers.answers(
        *error_answers.AUTH, 404, 503, examples=error_answers.NO_WORKFLOW
    ),
)
async def list_versions(name: str, request: Request) -> Response:
    return JSON(await workflow_versions.book(context.services(request)).listed(name))


@router.get(
    "/workflows/{name}/versions/{version}",
    summary="One version of a workflow, with its graph and manifest",
    operation_id="getWorkflowVersion",
    response_model=models.WorkflowVersionFiles,
    responses=error_answers.answers(*error_answers.AUTH, 404, 503),
)
async def get_version(name: str, version: str, request: Request) -> Response:
    return JSON(await workflow_versions.book(context.services(request)).one(name, version))


@router.post(
    "/workflows/reload",
    summary="Pick up added, changed and removed workflows",
    operation_id="reloadWorkflows",
    response_model=models.ReloadResult,
    responses=error_answers.answers(*error_answers.AUTH, 403, 503),
    dependencies=[Depends(context.admin_only)],
)
async def reload_workflows(request: Request) -> Response:
    return JSON(await commands.reload_workflows(context.services(request)), status_code=200)
