"""The original ComfyUI-server route, kept for its clients (docs/legacy-api.md).

`POST {ROUTE_PREFIX}` with `{"service_type", "client_task_id", "client_callback_url", "params"}`
runs workflow `service_type` like `POST /tasks` does (same validation, idempotency and refusals)
and answers 200 with that project's record (comfy_fleet/legacy_record.py); when the task ends,
`client_callback_url` gets the same record, filled in, with our task under `"task"` (and the
dispatcher's `"type"`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

from comfy_fleet import legacy_record
from comfy_fleet.log.task_state import TaskState


async def submit(
    services: Any, body: Any, view: Callable[[TaskState], Awaitable[dict[str, Any]]]
) -> Response:
    """Run `body.service_type` with `body.params`; answer 200 with the record and the task.

    Same refusals as POST /tasks (unknown workflow, invalid params or images, forbidden callback,
    overload, client_task_id reused for another request), with the API's error body.
    """
    from serve_app import submission

    state, _created = await submission.submit(
        services,
        workflow_name=body.service_type,
        params=body.params,
        client_task_id=body.client_task_id,
        callback_url=body.client_callback_url,
        priority=0,
        origin="legacy",
    )
    return JSONResponse({**legacy_record.record(state), "task": await view(state)}, status_code=200)
