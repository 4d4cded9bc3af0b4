"""Accepting a task: validate everything, record `task.submitted`, hand it to the router.

Nothing is recorded for a rejected request: every check (workflow, params, URL, admission)
runs before the one append, and the 202 is sent only after that append committed. The steps
are apart (`check`, `admit`, `prepare`) because a batch (serve_app/batches.py) runs them for
each of its tasks before it records them all at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from comfy_fleet import errors, hop_trace

from comfy_fleet.log import events
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.policies import access
from comfy_fleet.workflows import model_files, raw_graph, reruns
from serve_app import model_inputs, raw_graphs, workflow_versions
from serve_app.services import Services


#: The integers JSON values may hold here: what orjson (the log's encoder) can write.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
#: Deepest nesting the canonical form may have (orjson stops at 255).
MAX_DEPTH = 128


def request_hash(body: dict[str, Any]) -> str:
    """sha256 of the canonical request (client_task_id excluded): what "the same body" means.

    Raises WorkflowParamsInvalid (a problem under `params`) or InvalidRequest naming the value
    that cannot be recorded: an integer beyond 64 bits, a string with an unpaired surrogate,
    nesting deeper than MAX_DEPTH. It runs before validation, so it must refuse cleanly.
    """
    canonical = {k: v for k, v in body.items() if k != "client_task_id"}
    try:
        encoded = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise _unrecordable(canonical) from None
    return hashlib.sha256(encoded).hexdigest()


def _unrecordable(canonical: dict[str, Any]) -> errors.InvalidRequest:
    """The refusal naming the first value orjson cannot encode (iterative: no recursion)."""
    found: tuple[list[str], str] = ([], "cannot be encoded as JSON")
    stack: list[tuple[list[str], Any]] = [([key], value) for key, value in canonical.items()]
    while stack:
        loc, value = stack.pop()
        problem = _problem_of(value, len(loc))
        if problem is not None:
            found = (loc, problem)
            break
        if isinstance(value, dict):
            stack.extend((loc + [str(k)], v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((loc + [str(i)], v) for i, v in enumerate(value))
    loc, problem = found
    if loc[:1] == ["params"]:
        where = _shorten(".".join(loc[1:]) or "params")
        return errors.WorkflowParamsInvalid(
            f"invalid params: {where}: {problem}", [{"param": where, "problem": problem}]
        )
    where = _shorten(".".join(loc) or "body")
    return errors.InvalidRequest(
        f"invalid request: {where}: {problem}", [{"loc": loc[:20], "problem": problem}]
    )


def _shorten(where: str) -> str:
    return where if len(where) <= 120 else where[:100] + "…" + where[-19:]


def _problem_of(value: Any, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return "an integer beyond the 64-bit range"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string with an unpaired UTF-16 surrogate (not valid Unicode)"
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and _problem_of(key, depth) is not None:
                return f"a key that is {_problem_of(key, depth)}"
    return None


@dataclass(frozen=True)
class Checked:
    """One task that passed every check, not yet recorded (nothing of it is stored yet)."""

    #: the served workflow, or None for a raw graph
    workflow: Any
    #: params with defaults applied and random seeds drawn ({} for a raw graph)
    resolved: dict[str, Any]
    #: `request_hash` of the task's body: what the same client_task_id must match
    digest: str
    client_task_id: str | None
    callback_url: str | None
    priority: int
    origin: str
    tenant: str
    graph: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    graph_check: raw_graphs.Checked | None = None
    #: the seed params whose value was drawn ("random"), not given
    seeds_drawn: list[str] = field(default_factory=list)


def task_body(
    workflow_name: str, params: dict[str, Any], callback_url: str | None, priority: int,
    origin: str, graph: dict[str, Any] | None = None, files: dict[str, Any] | None = None,
    workflow_version: str | None = None,
) -> dict[str, Any]:
    """The canonical body of a task request (what `request_hash` digests)."""
    body: dict[str, Any] = {
        "workflow": workflow_name, "params": params, "callback_url": callback_url,
        "priority": priority, "origin": origin,
    }
    # only when pinned: the hash of an unpinned request is what it was before pinning
    if workflow_version is not None:
        body["workflow_version"] = workflow_version
    if graph is not None:
        body.update(graph=graph, files=files or {})
    return body


async def check(
    services: Services,
    *,
    workflow_name: str,
    params: dict[str, Any],
    client_task_id: str | None,
    callback_url: str | None,
    priority: int,
    tenant: str,
    origin: str = "tasks",
    graph: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
    digest: str | None = None,
    checked_urls: set[str] | None = None,
    workflow_version: str | None = None,
) -> Checked:
    """Validate one task as POST /tasks does (the workflow's version, the current files' or
    the pinned `workflow_version`, and its params, or the raw graph; the callback URL),
    recording nothing. Raises UnknownWorkflow, WorkflowVersionUnknown, WorkflowParamsInvalid,
    GraphInvalid, UrlForbidden or InvalidRequest naming the problem. `checked_urls` (a batch's)
    skips the URL policy for callbacks it already passed."""
    if digest is None:
        digest = request_hash(task_body(
            workflow_name, params, callback_url, priority, origin, graph, files, workflow_version
        ))
    workflow: Any = None
    resolved: dict[str, Any] = {}
    seeds_drawn: list[str] = []
    graph_check: raw_graphs.Checked | None = None
    if graph is not None:
        graph_check = await raw_graphs.check(services, graph, files or {})
    else:
        workflow = await workflow_versions.book(services).resolve(workflow_name, workflow_version)
        seeds_drawn = reruns.drawn_seeds(workflow.manifest, params)
        resolved = workflow.validate(params, limits=services.settings)
        # Model file names too long to route are refused now, before any model is fetched.
        model_files.of_params(workflow.graph, workflow.manifest.params, resolved)
    if callback_url is not None and (checked_urls is None or callback_url not in checked_urls):
        parsed = services.url_policy.check_url(callback_url)
        await services.url_policy.resolve_and_check(parsed)
        if checked_urls is not None:
            checked_urls.add(callback_url)
    return Checked(
        workflow, resolved, digest, client_task_id, callback_url, priority, origin, tenant,
        graph, files, graph_check, seeds_drawn,
    )


async def prepare(
    services: Services, checked: Checked, task_id: str, batch_id: str | None = None,
    staged: model_inputs.StagedModels | None = None,
) -> tuple[events.TaskSubmitted, list[events.Event]]:
    """The task's first event and the events to record with it (`task.model_fetched` of the
    models by URL it fetched): models staged in the bucket, image inputs kept in S3, the
    workflow's version stored (once). A served workflow's event holds its version and resolved
    params, no prompt (the endpoint renders it at dispatch); a raw graph's holds its prompt.
    `staged`: the task's models, staged already (`stage_models`; a batch stages every task's
    before it stores any image). Records no task in the log."""
    if checked.graph is not None:
        assert checked.graph_check is not None
        graph, files = checked.graph, checked.files or {}
        graph_checked = checked.graph_check
        prompt, inputs = await raw_graphs.stage(services, task_id, graph, files, graph_checked)
        return events.TaskSubmitted(
            workflow=raw_graph.WORKFLOW, workflow_version=raw_graph.digest(graph), params={},
            prompt=prompt, client_task_id=checked.client_task_id,
            callback_url=checked.callback_url, priority=checked.priority,
            request_hash=checked.digest, origin=checked.origin, inputs=inputs,
            required_labels=graph_checked.labels, tenant=checked.tenant, batch_id=batch_id,
            model_files=graph_checked.files,
        ), []
    workflow, resolved = checked.workflow, checked.resolved
    image_names = {
        name: f"fleet/{task_id}-{name}.png"
        for name, spec in workflow.manifest.params.items()
        if spec.type == "image" and name in resolved
    }
    if staged is None:
        staged = await stage_models(services, checked)
    inputs: list[dict[str, Any]] = []
    if image_names:
        inputs = await _stage_images(services, task_id, workflow, resolved, image_names)
        resolved = {
            k: (reruns.IMAGE_PLACEHOLDER if k in image_names else v) for k, v in resolved.items()
        }
    await workflow_versions.book(services).remember(workflow)
    return events.TaskSubmitted(
        workflow=workflow.name,
        workflow_version=workflow.version,
        params=resolved,
        client_task_id=checked.client_task_id,
        callback_url=checked.callback_url,
        priority=checked.priority,
        request_hash=checked.digest,
        origin=checked.origin,
        inputs=inputs,
        required_labels=list(workflow.required_labels) + staged.labels,
        tenant=checked.tenant,
        seeds_drawn=list(checked.seeds_drawn),
        models=staged.models,
        model_files=staged.files,
        batch_id=batch_id,
    ), list(staged.fetched)


async def stage_models(
    services: Services, checked: Checked, in_bucket: set[str] | None = None
) -> model_inputs.StagedModels:
    """Put the task's models given by URL in the bucket before anything is recorded
    (serve_app/model_inputs.py); a raw graph has none."""
    if checked.workflow is None:
        return model_inputs.StagedModels()
    return await model_inputs.stage_models(
        services, checked.workflow, checked.resolved, in_bucket=in_bucket
    )


async def submit(
    services: Services,
    *,
    workflow_name: str,
    params: dict[str, Any],
    client_task_id: str | None,
    callback_url: str | None,
    priority: int,
    tenant: str,
    origin: str = "tasks",
    graph: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
    principal: Any = None,
    workflow_version: str | None = None,
) -> tuple[TaskState, bool]:
    """Record a new task of `tenant` (→ (state, True)) or find the same earlier one of that
    tenant (→ (state, False)): client_task_id is unique per tenant. With `graph`, a raw graph
    (`serve_app.raw_graphs`: who may, its check, its files). Else the current files' version
    of the workflow runs, or the pinned `workflow_version`: the version is stored (once) before
    the task, which records the version and its resolved params (the endpoint renders the
    prompt from them at dispatch).

    Raises IdempotencyConflict for the same client_task_id with another body, Overloaded past
    the admission limits (the fleet's, and the tenant's TENANT_MAX_WAITING),
    WorkflowVersionUnknown for a pinned version the service does not hold, DatabaseUnavailable
    when the log cannot record it.
    """
    if graph is not None:
        raw_graphs.permit(services.settings, principal)
        files = files or {}
    digest = request_hash(task_body(
        workflow_name, params, callback_url, priority, origin, graph, files, workflow_version
    ))
    if client_task_id is not None:
        existing = await services.log.find_client_task(client_task_id, tenant)
        if existing is not None:
            return _same_or_conflict(existing, digest), False
    checked = await check(
        services, workflow_name=workflow_name, params=params, client_task_id=client_task_id,
        callback_url=callback_url, priority=priority, tenant=tenant, origin=origin, graph=graph,
        files=files, digest=digest, workflow_version=workflow_version,
    )
    await admit(services, tenant)
    task_id = str(uuid.uuid4())
    event, also = await prepare(services, checked, task_id)
    return await _record(services, task_id, event, client_task_id, digest, also)


async def _record(
    services: Services, task_id: str, event: events.TaskSubmitted, client_task_id: str | None,
    digest: str, also: list[events.Event] | None = None,
) -> tuple[TaskState, bool]:
    """Append `task.submitted` (and `also`: the models it fetched): the one write of a submission."""
    tenant = event.tenant
    try:
        hop_trace.mark("ingress.append", task_id)
        state = await services.log.append(task_id, 0, [event, *(also or [])])
        hop_trace.mark("ingress.appended", task_id)
    except errors.DuplicateClientTaskId:
        # Lost a race with the same client_task_id: answer as the winner was answered. Nothing
        # of this request was recorded, so the inputs it stored name no task.
        await discard_inputs(services, [event])
        assert client_task_id is not None
        existing = await services.log.find_client_task(client_task_id, tenant)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    # No actor call: the router follows new tasks from the log (its notice, and a scan). The
    # replica counts the task into its estimate of the waiting tasks until its next refresh
    # from the router (serve_app/ingress.py).
    count_admitted(services, tenant, 1)
    return state, True


def count_admitted(services: Services, tenant: str, count: int) -> None:
    """Count `count` recorded tasks of `tenant` into the replica's estimates of waiting tasks."""
    services.waiting_estimate += count
    services.tenant_waiting[tenant] = services.tenant_waiting.get(tenant, 0) + count


async def admit(services: Services, tenant: str, count: int = 1) -> None:
    """Admission control: refuse (429 with Retry-After) when `count` more tasks of `tenant`
    would pass MAX_WAITING_TASKS in all, or TENANT_MAX_WAITING of `tenant`'s own; other tenants
    go on. The estimates only grow between refreshes from the router, so the router is asked
    before refusing."""
    settings = services.settings
    limit = settings.tenant_max_waiting

    def over_all() -> bool:
        return services.waiting_estimate + count > settings.max_waiting_tasks

    def over_tenant() -> bool:
        return limit is not None and services.tenant_waiting.get(tenant, 0) + count > limit

    if over_all() or over_tenant():
        with contextlib.suppress(Exception):
            absorb_stats(services, await services.router.stats())
    if over_all():
        raise errors.Overloaded(
            f"{services.waiting_estimate} tasks are waiting (limit {settings.max_waiting_tasks}); "
            "retry later",
            {"retry_after_s": 5},
        )
    waiting = services.tenant_waiting.get(tenant, 0)
    if limit is not None and count > 1 and waiting + count > limit:
        raise errors.Overloaded(
            f"tenant {tenant} has {waiting} tasks waiting; {count} more would pass its limit "
            f"{limit}; retry later",
            {"tenant": tenant, "waiting": waiting, "limit": limit, "retry_after_s": 5},
        )
    access.check_waiting(tenant, waiting, limit)


def absorb_stats(services: Services, stats: dict[str, Any]) -> None:
    """Take the router's counts of waiting tasks (`Router.stats()`: in all, and per tenant)
    as the replica's estimates, which each submission then counts itself into."""
    services.waiting_estimate = int(stats["waiting"])
    services.tenant_waiting = {str(t): int(n) for t, n in (stats.get("tenants") or {}).items()}

def _same_or_conflict(existing: TaskState, digest: str) -> TaskState:
    if existing.request_hash != digest:
        raise errors.IdempotencyConflict(
            f"client_task_id {existing.client_task_id!r} was used for a different request",
            {"task_id": existing.task_id},
        )
    return existing


async def _stage_images(
    services: Services, task_id: str, workflow: Any, resolved: dict[str, Any], names: dict[str, str]
) -> list[dict[str, Any]]:
    """Decode, fetch and check image inputs, and keep them in S3 until dispatch uploads them."""
    from serve_app import inputs as inputs_module

    return await inputs_module.stage_images(services, task_id, workflow, resolved, names)


async def discard_inputs(services: Services, submitted: list[events.TaskSubmitted]) -> None:
    """Delete the image inputs staged for tasks whose recording was refused (best effort)."""
    from serve_app import inputs as inputs_module

    await inputs_module.discard(services, [item for ev in submitted for item in ev.inputs])
