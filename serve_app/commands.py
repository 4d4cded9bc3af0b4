"""What the API's writes do, free of HTTP: submit, rerun, cancel, redeliver, reload the
workflows, add and remove endpoints. Routes translate requests into these calls and their results into
answers; the commands raise `comfy_fleet.errors` for every refusal.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from comfy_fleet import config, errors
from comfy_fleet.log import events, task_state
from comfy_fleet.log import cancel as cancel_module
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.policies import access, fleet_addresses
from serve_app import reruns, submission
from serve_app.services import Services

#: The longest a request may hold its answer for a task to end (`?wait=`).
MAX_WAIT_S = 300.0
#: How long a cancel waits for the task to reach its end before answering.
CANCEL_WAIT_S = 2.0
#: Attempts at appending a final event before reading whatever ended the task instead.
FINAL_APPEND_ATTEMPTS = 5


#: Record a new task of a tenant, or find the same earlier one (`serve_app.submission.submit`:
#: its checks and refusals are there).
submit = submission.submit


async def rerun(
    services: Services,
    task_id: str,
    principal: access.Principal,
    *,
    overrides: dict[str, Any],
    priority: int | None,
    same_seed: bool,
    callback_url: str | None = None,
) -> TaskState:
    """Record a new task that runs task `task_id` again, as its tenant's task; another
    tenant's task is unknown (`visible_task`). See `serve_app.reruns.rerun` for what it reuses
    and its refusals."""
    original = await visible_task(services, task_id, principal)
    return await reruns.rerun(
        services, original, overrides=overrides, priority=priority, same_seed=same_seed,
        callback_url=callback_url,
    )


async def visible_task(services: Services, task_id: str, principal: access.Principal) -> TaskState:
    """The task, when `principal` may act on it; another tenant's task raises exactly what an
    unknown id raises (`TaskNotFound`, same message), so its existence is not revealed."""
    state = await services.log.get(task_id)
    access.check_access(principal, state.tenant, errors.TaskNotFound(f"no task {task_id}"))
    return state


async def wait_final(services: Services, state: TaskState, wait_s: float) -> TaskState:
    """The task's state once it has ended, or as it is after `wait_s` seconds."""
    end = time.monotonic() + wait_s
    log = services.log
    while not state.is_final:
        left = end - time.monotonic()
        if left <= 0:
            break
        await log.wait_for_change(state.task_id, state.seq, min(left, 5.0))
        state = await log.get(state.task_id)
    return state


async def cancel(services: Services, task_id: str, principal: access.Principal) -> TaskState:
    """Cancel the task wherever it is (`request_cancel`). Returns the state after a short wait
    for the end; an ended task is returned as it is. Another tenant's task is unknown
    (`visible_task`)."""
    state = await request_cancel(services, task_id, principal)
    if state.is_final:
        return state
    return await wait_final(services, await services.log.get(task_id), CANCEL_WAIT_S)


async def request_cancel(
    services: Services, task_id: str, principal: access.Principal
) -> TaskState:
    """Record the cancel (once), ask the router to drop the task from its queue, or let the
    endpoint running it interrupt it; no wait for the end (a batch's cancel runs it per task).
    Another tenant's task is unknown (`visible_task`)."""
    log = services.log
    state = await visible_task(services, task_id, principal)
    if state.is_final:
        return state
    requested = cancel_module.request(state)
    if requested:
        # Lost a race with another writer: the cancel is decided from the state that won.
        with contextlib.suppress(errors.ConcurrencyConflict):
            state = await log.append(task_id, state.seq, requested, state)
    answer = await services.router.cancel(task_id)
    removed = cancel_module.decide(cancel_module.REQUESTED, cancel_module.Where.WAITING)
    if answer == removed.answer:
        (event,) = removed.record
        state = await _append_final(services, task_id, event)
    return state


async def redeliver(services: Services, task_id: str, principal: access.Principal) -> TaskState:
    """Deliver an ended task's webhook again. Raises Conflict for a task without a callback
    or one that has not ended; another tenant's task is unknown (`visible_task`)."""
    log = services.log
    state = await visible_task(services, task_id, principal)
    if not state.callback_url:
        raise errors.Conflict("the task has no callback_url")
    if not state.is_final:
        raise errors.Conflict(f"the task has not ended (status {state.status})")
    if state.webhook != task_state.WEBHOOK_PENDING:
        state = await log.append(task_id, state.seq, [events.WebhookRedeliveryRequested()], state)
    await services.webhooks.task_ended(task_id)
    return state


async def reload_workflows(services: Services) -> dict[str, Any]:
    """Pick up added, changed and removed workflows; the endpoints re-learn which workflows they
    can run, so routing follows at once."""
    result = services.registry.reload()
    runnable = await services.router.reload_workflows()
    return {**result.to_json(), "endpoints": runnable}


async def add_endpoint(services: Services, endpoint: str, labels: list[str]) -> dict[str, Any]:
    """Add a ComfyUI endpoint (`host:port`) at run time. Raises InvalidRequest for a malformed
    address, UrlForbidden for one the URL policy refuses (link-local, metadata, the service
    itself) and NotAComfyUI (422 `endpoint_not_comfyui`) for one that does not answer as a ComfyUI: nothing is
    recorded for any of them. The endpoint is denied to callbacks and image URLs (here, in the
    webhook actor, and in other replicas at their next refresh) before it can run anything."""
    from comfy_fleet.comfy import probe

    try:
        parsed = config.parse_endpoint(endpoint, "endpoint")
    except errors.ConfigError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    fleet = services.url_policy.fleet
    await probe.check_endpoint(
        parsed.host, parsed.port,
        fleet.current if fleet is not None else fleet_addresses.FleetSnapshot(),
        scheme=parsed.scheme,
    )
    if fleet is not None:
        fleet.add(parsed.name)
    await services.webhooks.fleet_add(parsed.name)
    added = await services.router.add_endpoint(parsed.name, labels)
    await _refresh_fleet(services)
    return added


async def remove_endpoint(services: Services, endpoint: str) -> dict[str, Any]:
    """Drain and remove an endpoint. Raises EndpointNotFound for one the fleet does not have."""
    removed = await services.router.remove_endpoint(endpoint)
    await _refresh_fleet(services)
    return removed


async def _refresh_fleet(services: Services) -> None:
    if services.fleet_refresher is not None:
        await services.fleet_refresher.refresh()


async def _append_final(services: Services, task_id: str, event: events.Event) -> TaskState:
    log = services.log
    for _ in range(FINAL_APPEND_ATTEMPTS):
        state = await log.get(task_id)
        if state.is_final:
            return state
        try:
            state = await log.append(task_id, state.seq, [event], state)
        except errors.ConcurrencyConflict:
            continue
        if state.is_final:
            from actors import metrics

            metrics.task_ended(state.workflow, state.status)
            await services.webhooks.task_ended(task_id)
        return state
    return await log.get(task_id)
