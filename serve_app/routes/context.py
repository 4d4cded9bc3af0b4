"""What a route gets from its request: the replica's services, the authenticated principal,
and the shared ways of naming and showing a task."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import Request

from comfy_fleet import errors, views
from comfy_fleet.log import events, task_state
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.policies import access
from serve_app.services import Services

log = logging.getLogger("comfy_fleet.ingress")


def services(request: Request) -> Services:
    """The replica's services (built once by the app's lifespan)."""
    built: Services = request.app.state.services
    return built


def principal(request: Request) -> access.Principal:
    """Who the request acts for, as `middleware.auth.Authenticate` resolved it. Only an open
    path is reached without one, and no route that asks for it is open: refuse, never guess."""
    found: access.Principal | None = getattr(request.state, "principal", None)
    if found is None:
        raise errors.Forbidden("no key resolved for this request")
    return found


def admin_only(request: Request) -> None:
    """A route that reads or changes the fleet: 403 `forbidden` to a tenant key (a dependency,
    so it answers before the body is even validated)."""
    access.check_fleet(principal(request))


def unknown_task(task_id: str) -> errors.TaskNotFound:
    """The one answer for a task id that is unknown or another tenant's (docs/api.md §7.1:
    the same 404, code and message, so a task's existence is not revealed)."""
    return errors.TaskNotFound(f"no task {task_id}")


def check_task(request: Request, task_id: str, tenant: str | None) -> None:
    """Raise `unknown_task` unless the request's principal may see tasks of `tenant`."""
    access.check_access(principal(request), tenant, unknown_task(task_id))


def check_stream(request: Request, task_id: str, stream: list[events.StoredEvent]) -> None:
    """For routes that read a task's events: unknown (no events) or another tenant's → 404."""
    if not stream:
        raise unknown_task(task_id)
    first = stream[0].event
    tenant = first.tenant if isinstance(first, events.TaskSubmitted) else None
    check_task(request, task_id, tenant)


async def own_task(request: Request, s: Services, task_id: str) -> TaskState:
    """The task, if the request's principal may see it (else the unknown id's 404)."""
    state = await s.log.get(task_id)
    check_task(request, task_id, state.tenant)
    return state


def task_id_of(raw: str) -> str:
    """The canonical form of a task id from a path; a malformed one is a task that does not
    exist (404), as the contract says of unknown ids."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise errors.TaskNotFound(f"no task {raw[:64]!r}") from None


async def task_view(s: Services, state: TaskState, *, queue: bool = False) -> dict[str, Any]:
    """The task as the API shows it (outputs with fresh presigned links); with `queue`, a
    task not ended also carries its queue position and ETA (one router call)."""
    place = (await queue_places(s, [state])).get(state.task_id) if queue else None
    return await views.task_view(state, s.store, s.settings.presign_expiry_s, place)


async def queue_places(s: Services, states: Iterable[TaskState]) -> dict[str, dict[str, Any]]:
    """The router's queue position and ETA of the tasks not ended among `states`, in one call
    (none when all have ended). The router unreachable, or not holding a task (its notice not
    yet heard), leaves it out: a read never fails for an estimate."""
    open_states = [st for st in states if not st.is_final]
    if not open_states:
        return {}
    running = [st.task_id for st in open_states if st.status == task_state.RUNNING]
    try:
        return await s.router.queue_info([st.task_id for st in open_states], running or None)
    except Exception:
        log.debug("queue_info failed; tasks shown without queue", exc_info=True)
        return {}
