"""Accepting a task: validate everything, record `task.submitted`, hand it to the router.

Nothing is recorded for a rejected request: every check (workflow, params, URL, admission)
runs before the one append, and the 202 is sent only after that append committed. The steps
are separate so a batch (serve_app/batches.py) runs them per task and records all at once:
`check` validates one task, `prepare` builds its first event, `admit` applies the limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import uuid
from typing import Any

import orjson

from comfy_fleet import errors

from comfy_fleet.log import events
from comfy_fleet.log.task_state import TaskState
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


@dataclasses.dataclass(frozen=True)
class Checked:
    """One task that passed every check, not yet recorded (nothing of it is stored yet)."""

    workflow: Any
    #: params with defaults applied and random seeds drawn
    resolved: dict[str, Any]
    #: `request_hash` of the task's body: what the same client_task_id must match
    digest: str
    client_task_id: str | None
    callback_url: str | None
    priority: int
    origin: str


def task_body(
    workflow_name: str, params: dict[str, Any], callback_url: str | None, priority: int, origin: str
) -> dict[str, Any]:
    """The canonical body of a task request (what `request_hash` digests)."""
    return {
        "workflow": workflow_name, "params": params, "callback_url": callback_url,
        "priority": priority, "origin": origin,
    }


async def check(
    services: Services,
    *,
    workflow_name: str,
    params: dict[str, Any],
    client_task_id: str | None,
    callback_url: str | None,
    priority: int,
    origin: str = "tasks",
    digest: str | None = None,
    checked_urls: set[str] | None = None,
) -> Checked:
    """Validate one task as POST /tasks does (workflow, params, callback URL), recording nothing.

    Raises UnknownWorkflow, WorkflowParamsInvalid, UrlForbidden or InvalidRequest naming the
    problem. `checked_urls` (a batch's) skips the URL policy for callbacks it already passed."""
    if digest is None:
        digest = request_hash(task_body(workflow_name, params, callback_url, priority, origin))
    try:
        workflow = services.registry.get(workflow_name)
    except errors.WorkflowNotFound:
        raise errors.UnknownWorkflow(
            f"workflow {workflow_name!r} is not served; GET /workflows lists them",
            {"workflow": workflow_name, "known": services.registry.names()},
        ) from None
    resolved = workflow.validate(params, limits=services.settings)
    if callback_url is not None and (checked_urls is None or callback_url not in checked_urls):
        parsed = services.url_policy.check_url(callback_url)
        await services.url_policy.resolve_and_check(parsed)
        if checked_urls is not None:
            checked_urls.add(callback_url)
    return Checked(workflow, resolved, digest, client_task_id, callback_url, priority, origin)


async def admit(services: Services, count: int = 1) -> None:
    """Raise Overloaded when `count` more waiting tasks would pass the admission limit."""
    settings = services.settings
    if services.waiting_estimate + count > settings.max_waiting_tasks:
        # The estimate only grows between refreshes: ask the router before refusing.
        with contextlib.suppress(Exception):
            services.waiting_estimate = int((await services.router.stats())["waiting"])
    if services.waiting_estimate + count > settings.max_waiting_tasks:
        raise errors.Overloaded(
            f"{services.waiting_estimate} tasks are waiting (limit {settings.max_waiting_tasks}); "
            "retry later",
            {"retry_after_s": 5},
        )


async def prepare(
    services: Services, checked: Checked, task_id: str, batch_id: str | None = None
) -> events.TaskSubmitted:
    """The task's first event: its prompt built, its image inputs staged in S3 (kept there
    until dispatch uploads them). Records nothing in the log."""
    workflow, resolved = checked.workflow, checked.resolved
    image_names = {
        name: f"fleet/{task_id}-{name}.png"
        for name, spec in workflow.manifest.params.items()
        if spec.type == "image" and name in resolved
    }
    prompt = workflow.build_prompt(resolved, task_id=task_id, image_names=image_names)
    inputs: list[dict[str, Any]] = []
    if image_names:
        inputs = await _stage_images(services, task_id, workflow, resolved, image_names)
        resolved = {k: ("<image>" if k in image_names else v) for k, v in resolved.items()}
    return events.TaskSubmitted(
        workflow=workflow.name,
        workflow_version=workflow.version,
        params=resolved,
        prompt=prompt,
        client_task_id=checked.client_task_id,
        callback_url=checked.callback_url,
        priority=checked.priority,
        request_hash=checked.digest,
        origin=checked.origin,
        inputs=inputs,
        required_labels=list(workflow.required_labels),
        batch_id=batch_id,
    )


async def submit(
    services: Services,
    *,
    workflow_name: str,
    params: dict[str, Any],
    client_task_id: str | None,
    callback_url: str | None,
    priority: int,
    origin: str = "tasks",
) -> tuple[TaskState, bool]:
    """Record a new task (→ (state, True)) or find the same earlier one (→ (state, False)).

    Raises IdempotencyConflict for the same client_task_id with another body, Overloaded past
    the admission limit, DatabaseUnavailable when the log cannot record it.
    """
    digest = request_hash(task_body(workflow_name, params, callback_url, priority, origin))
    if client_task_id is not None:
        existing = await services.log.find_client_task(client_task_id)
        if existing is not None:
            return _same_or_conflict(existing, digest), False

    checked = await check(
        services, workflow_name=workflow_name, params=params, client_task_id=client_task_id,
        callback_url=callback_url, priority=priority, origin=origin, digest=digest,
    )
    await admit(services)
    task_id = str(uuid.uuid4())
    event = await prepare(services, checked, task_id)
    try:
        state = await services.log.append(task_id, 0, [event])
    except errors.DuplicateClientTaskId:
        # Lost a race with the same client_task_id: answer as the winner was answered.
        assert client_task_id is not None
        existing = await services.log.find_client_task(client_task_id)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    # No actor call: the router follows new tasks from the log (its notice, and a scan). The
    # replica counts the task into its estimate of the waiting tasks until its next refresh
    # from the router (serve_app/ingress.py).
    services.waiting_estimate += 1
    return state, True


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

