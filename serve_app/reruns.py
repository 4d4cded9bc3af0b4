"""POST /tasks/{task_id}/rerun: a new task from an earlier one (docs/api.md §7.3).

The new task runs the same workflow version with the same params and image inputs (the bytes
kept in S3 are reused: the client sends no image again), changed by the overrides; each seed the
original drew is drawn afresh unless `same_seed` (comfy_fleet/workflows/reruns.py). It records
`rerun_of`. Its outputs are always made anew: the endpoint gives every task's save nodes a
`filename_prefix` of its own (`params.task_filename_prefix`), so ComfyUI's cache, which skips a
prompt identical to one it ran, never serves a rerun the original's files.
Nothing is recorded for a refused rerun, as for POST /tasks.
"""

from __future__ import annotations

import uuid
from typing import Any

from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.workflows import params as params_module, raw_graph, reruns
from comfy_fleet.workflows.registry import Workflow
from serve_app import inputs as inputs_module, model_inputs, submission, workflow_versions
from serve_app.services import Services


async def rerun(
    services: Services,
    original: TaskState,
    *,
    overrides: dict[str, Any],
    priority: int | None,
    same_seed: bool,
    callback_url: str | None,
) -> TaskState:
    """Record the rerun of `original` (a task the caller may see) as a task of its tenant,
    and return its state.

    Raises WorkflowVersionUnknown when the service no longer holds the task's version (a task
    recorded before versions were stored, of files changed since), RerunInputsGone when its
    image inputs were not kept, WorkflowParamsInvalid (and the other refusals of POST /tasks)
    for bad overrides, Overloaded past the admission limit.
    """
    body = {
        "rerun_of": original.task_id, "params": overrides, "priority": priority,
        "same_seed": same_seed, "callback_url": callback_url,
    }
    digest = submission.request_hash(body)  # also refuses values the log cannot record
    if original.workflow == raw_graph.WORKFLOW:
        raise errors.WorkflowVersionUnknown(
            f"task {original.task_id} ran a raw graph, which is not kept as a version: "
            "POST /tasks with its graph again",
            {"workflow": original.workflow, "workflow_version": original.workflow_version},
        )
    book = workflow_versions.book(services)
    workflow = await book.resolve(original.workflow, original.workflow_version)
    resolved, reused, seeds_drawn = _params(
        services, original, workflow, overrides, same_seed=same_seed
    )
    if callback_url is not None:
        parsed = services.url_policy.check_url(callback_url)
        await services.url_policy.resolve_and_check(parsed)
    await submission.admit(services, original.tenant)

    task_id = str(uuid.uuid4())
    # models by URL: in the bucket already (the original put them there), so nothing is fetched
    staged = await model_inputs.stage_models(services, workflow, resolved)
    params, inputs = await _inputs(services, task_id, original, workflow, resolved, reused)
    await book.remember(workflow)
    event = events.TaskSubmitted(
        workflow=workflow.name,
        workflow_version=workflow.version,
        params=params,
        callback_url=callback_url if callback_url is not None else original.callback_url,
        priority=original.priority if priority is None else priority,
        request_hash=digest,
        origin=original.origin,
        inputs=inputs,
        required_labels=list(workflow.required_labels) + staged.labels,
        models=staged.models,
        model_files=staged.files,
        seeds_drawn=seeds_drawn,
        rerun_of=original.task_id,
        tenant=original.tenant,
    )
    state, _created = await submission._record(
        services, task_id, event, None, digest, staged.fetched
    )
    return state


def _params(
    services: Services, original: TaskState, workflow: Workflow, overrides: dict[str, Any],
    *, same_seed: bool,
) -> tuple[dict[str, Any], set[str], list[str]]:
    """The rerun's resolved params (reused images left out), the reused image params, and
    its `seeds_drawn`."""
    manifest = workflow.manifest
    kept = {str(spec["param"]): spec for spec in original.inputs}
    reused = reruns.reused_images(original.params, overrides, manifest)
    gone = sorted(name for name in reused if "sha256" not in kept.get(name, {}))
    if gone:
        raise errors.RerunInputsGone(
            f"task {original.task_id} was recorded before image inputs were kept: its "
            f"{', '.join(gone)} cannot be reused; send the image(s) in params",
            {"params": gone},
        )
    wanted = reruns.rerun_params(
        original.params, original.seeds_drawn, overrides, same_seed=same_seed
    )
    wanted = {k: v for k, v in wanted.items() if k not in reused}
    seeds_drawn = reruns.kept_draws(
        original.seeds_drawn, overrides, same_seed=same_seed,
        drawn_now=reruns.drawn_seeds(manifest, wanted),
    )
    relaxed = reruns.without_images(manifest, reused)
    resolved = params_module.validate_params(relaxed, wanted, limits=services.settings)
    return resolved, reused, seeds_drawn


async def _inputs(
    services: Services, task_id: str, original: TaskState, workflow: Workflow,
    resolved: dict[str, Any], reused: set[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The params to record (images as placeholders) and the rerun's inputs: the reused ones
    (their S3 objects kept, only their file name on the ComfyUI host is this task's) and
    those given anew in the overrides, staged as for POST /tasks."""
    new_images = {
        name: f"fleet/{task_id}-{name}.png"
        for name, spec in workflow.manifest.params.items()
        if spec.type == "image" and name in resolved
    }
    staged: list[dict[str, Any]] = []
    if new_images:
        staged = await inputs_module.stage_images(
            services, task_id, workflow, resolved, new_images
        )
    kept = {str(spec["param"]): spec for spec in original.inputs}
    reused_inputs = [
        {**kept[name], "filename": f"fleet/{task_id}-{name}.png"} for name in sorted(reused)
    ]
    params = {k: (reruns.IMAGE_PLACEHOLDER if k in new_images else v) for k, v in resolved.items()}
    params.update({name: reruns.IMAGE_PLACEHOLDER for name in reused})
    return params, [*reused_inputs, *staged]
