"""Accepting a task: validate everything, record `task.submitted`, hand it to the router.

Nothing is recorded for a rejected request: every check (workflow, params, URL, admission)
runs before the one append, and the 202 is sent only after that append committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from typing import Any

import orjson

from comfy_fleet import errors

from comfy_fleet.log import events
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.policies import access
from comfy_fleet.workflows import raw_graph, reruns
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
    body = {
        "workflow": workflow_name,
        "params": params,
        "callback_url": callback_url,
        "priority": priority,
        "origin": origin,
        # only when pinned: the hash of an unpinned request is what it was before pinning
        **({"workflow_version": workflow_version} if workflow_version is not None else {}),
    }
    if graph is not None:
        raw_graphs.permit(services.settings, principal)
        files = files or {}
        body.update(graph=graph, files=files)
    digest = request_hash(body)
    if client_task_id is not None:
        existing = await services.log.find_client_task(client_task_id, tenant)
        if existing is not None:
            return _same_or_conflict(existing, digest), False

    settings = services.settings
    if graph is not None:
        checked = await raw_graphs.check(services, graph, files or {})
    else:
        book = workflow_versions.book(services)
        workflow = await book.resolve(workflow_name, workflow_version)
        seeds_drawn = reruns.drawn_seeds(workflow.manifest, params)
        resolved = workflow.validate(params, limits=settings)
    if callback_url is not None:
        parsed = services.url_policy.check_url(callback_url)
        await services.url_policy.resolve_and_check(parsed)

    await _admit(services, tenant)

    task_id = str(uuid.uuid4())
    if graph is not None:
        prompt, inputs = await raw_graphs.stage(services, task_id, graph, files or {}, checked)
        event = events.TaskSubmitted(
            workflow=raw_graph.WORKFLOW, workflow_version=raw_graph.digest(graph), params={},
            prompt=prompt, client_task_id=client_task_id, callback_url=callback_url,
            priority=priority, request_hash=digest, origin=origin, inputs=inputs,
            required_labels=checked.labels, tenant=tenant,
        )
        return await _record(services, task_id, event, client_task_id, digest)
    image_names = {
        name: f"fleet/{task_id}-{name}.png"
        for name, spec in workflow.manifest.params.items()
        if spec.type == "image" and name in resolved
    }
    # Models by URL are in the bucket before anything is recorded (serve_app/model_inputs.py).
    staged = await model_inputs.stage_models(services, workflow, resolved)
    inputs: list[dict[str, Any]] = []
    if image_names:
        inputs = await _stage_images(services, task_id, workflow, resolved, image_names)
        resolved = {
            k: (reruns.IMAGE_PLACEHOLDER if k in image_names else v) for k, v in resolved.items()
        }
    await book.remember(workflow)
    event = events.TaskSubmitted(
        workflow=workflow.name,
        workflow_version=workflow.version,
        params=resolved,
        client_task_id=client_task_id,
        callback_url=callback_url,
        priority=priority,
        request_hash=digest,
        origin=origin,
        inputs=inputs,
        required_labels=list(workflow.required_labels) + staged.labels,
        tenant=tenant,
        seeds_drawn=seeds_drawn,
        models=staged.models,
    )
    return await _record(services, task_id, event, client_task_id, digest, staged.fetched)


async def _record(
    services: Services, task_id: str, event: events.TaskSubmitted, client_task_id: str | None,
    digest: str, also: list[events.Event] | None = None,
) -> tuple[TaskState, bool]:
    """Append `task.submitted` (and `also`: the models it fetched): the one write of a submission."""
    tenant = event.tenant
    try:
        state = await services.log.append(task_id, 0, [event, *(also or [])])
    except errors.DuplicateClientTaskId:
        # Lost a race with the same client_task_id: answer as the winner was answered.
        assert client_task_id is not None
        existing = await services.log.find_client_task(client_task_id, tenant)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    # No actor call: the router follows new tasks from the log (its notice, and a scan). The
    # replica counts the task into its estimate of the waiting tasks until its next refresh
    # from the router (serve_app/ingress.py).
    services.waiting_estimate += 1
    services.tenant_waiting[tenant] = services.tenant_waiting.get(tenant, 0) + 1
    return state, True


async def _admit(services: Services, tenant: str) -> None:
    """Admission control: refuse (429 with Retry-After) past MAX_WAITING_TASKS in all, or past
    TENANT_MAX_WAITING of `tenant`'s own; other tenants go on. The estimates only grow between
    refreshes from the router, so the router is asked before refusing."""
    settings = services.settings
    limit = settings.tenant_max_waiting
    over_all = services.waiting_estimate >= settings.max_waiting_tasks
    over_tenant = limit is not None and services.tenant_waiting.get(tenant, 0) >= limit
    if over_all or over_tenant:
        with contextlib.suppress(Exception):
            absorb_stats(services, await services.router.stats())
    if services.waiting_estimate >= settings.max_waiting_tasks:
        raise errors.Overloaded(
            f"{services.waiting_estimate} tasks are waiting (limit {settings.max_waiting_tasks}); "
            "retry later",
            {"retry_after_s": 5},
        )
    access.check_waiting(tenant, services.tenant_waiting.get(tenant, 0), limit)


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

