"""What a route gets from its request: the replica's services, the authenticated principal,
and the shared ways of naming and showing a task."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request

from comfy_fleet import errors, views
from comfy_fleet.log.task_state import TaskState
from serve_app.middleware import auth
from serve_app.services import Services


def services(request: Request) -> Services:
    """The replica's services (built once by the app's lifespan)."""
    built: Services = request.app.state.services
    return built


def principal(request: Request) -> auth.Principal | None:
    """Who the request acts for, as `middleware.auth.Authenticate` resolved it (None only on
    an open path reached without a key)."""
    found: auth.Principal | None = getattr(request.state, "principal", None)
    return found


def task_id_of(raw: str) -> str:
    """The canonical form of a task id from a path; a malformed one is a task that does not
    exist (404), as the contract says of unknown ids."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise errors.TaskNotFound(f"no task {raw[:64]!r}") from None


async def task_view(s: Services, state: TaskState) -> dict[str, Any]:
    """The task as the API shows it (outputs with fresh presigned links)."""
    return await views.task_view(state, s.store, s.settings.presign_expiry_s)
