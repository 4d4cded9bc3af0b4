"""/tasks: submit, list, read, stream, cancel and redeliver tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from comfy_fleet import errors, views
from comfy_fleet.log import events
from serve_app import batches, commands, schemas
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter()

#: How long the stream waits for a new event before sending a keep-alive comment.
KEEP_ALIVE_S = 15.0
#: The largest seq an event can have (the log's `seq integer` column).
MAX_SEQ = 2**31 - 1


@router.post("/tasks", status_code=202, summary="Submit a task")
async def post_task(
    body: schemas.SubmitTask,
    request: Request,
    wait: float | None = Query(
        default=None, ge=0, le=commands.MAX_WAIT_S, description="seconds to hold the answer"
    ),
) -> Response:
    s = context.services(request)
    state, created = await commands.submit(
        s,
        workflow_name=body.workflow,
        params=body.params,
        client_task_id=body.client_task_id,
        callback_url=body.callback_url,
        priority=body.priority,
    )
    if wait:
        state = await commands.wait_final(s, state, wait)
    status = 200 if (not created or state.is_final) else 202
    return JSON(await context.task_view(s, state), status_code=status)


@router.get("/tasks", summary="List tasks, newest first")
async def list_tasks(
    request: Request,
    client_task_id: str | None = Query(default=None, max_length=128),
    status: str | None = Query(
        default=None, pattern="^(queued|dispatched|running|succeeded|failed|cancelled)$"
    ),
    workflow: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=500),
    batch_id: str | None = Query(default=None, max_length=64, description="tasks of one batch"),
) -> Response:
    s = context.services(request)
    if batch_id is not None:
        # Another tenant's batch, or no batch: no tasks (its existence is not revealed).
        tenant = getattr(context.principal(request), "tenant", None)
        try:
            batch_id = (await batches.get(s, batch_id, tenant)).batch_id
        except errors.BatchNotFound:
            return JSON({"tasks": [], "next_cursor": None})
    states, next_cursor = await s.log.list_tasks(
        status=status, workflow=workflow, client_task_id=client_task_id, limit=limit,
        cursor=cursor, batch_id=batch_id,
    )
    tasks = [await context.task_view(s, state) for state in states]
    return JSON({"tasks": tasks, "next_cursor": next_cursor})


@router.get("/tasks/{task_id}", summary="One task")
async def get_task(task_id: str, request: Request) -> Response:
    s = context.services(request)
    return JSON(await context.task_view(s, await s.log.get(context.task_id_of(task_id))))


@router.get("/tasks/{task_id}/events", summary="The task's events, in order")
async def get_events(task_id: str, request: Request) -> Response:
    tid = context.task_id_of(task_id)
    stream = await context.services(request).log.read(tid)
    if not stream:
        raise errors.TaskNotFound(f"no task {tid}")
    return JSON([views.event_view(e) for e in stream])


@router.get("/tasks/{task_id}/stream", summary="Server-Sent Events of the task's events")
async def stream_task(task_id: str, request: Request) -> Response:
    tid = context.task_id_of(task_id)
    s = context.services(request)
    after = last_event_id(request.headers.get("last-event-id"))
    if not await s.log.read(tid, 0):
        raise errors.TaskNotFound(f"no task {tid}")

    async def frames() -> AsyncIterator[bytes]:
        nonlocal after
        while True:
            batch = await s.log.read(tid, after)
            final = False
            for e in batch:
                after = e.seq
                data = orjson.dumps(views.event_view(e)).decode()
                yield f"id: {e.seq}\nevent: {e.event.TYPE}\ndata: {data}\n\n".encode()
                final = final or e.event.TYPE in events.FINAL_TYPES
            if final or (batch == [] and (await s.log.get(tid)).is_final):
                return
            await s.log.wait_for_change(tid, after, KEEP_ALIVE_S)
            if not batch:
                yield b": keep-alive\n\n"

    return StreamingResponse(
        frames(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def last_event_id(value: str | None) -> int:
    """The seq a stream resumes after: 0 without the header. Raises InvalidRequest for
    anything but an event's seq (ASCII digits within the seq's range): `str.isdigit` also
    accepts "²" and "٣", which `int` refuses, and `int` of thousands of digits is refused too."""
    if value is None:
        return 0
    seq = value.strip()
    if seq.isascii() and seq.isdigit() and len(seq) <= len(str(MAX_SEQ)) and int(seq) <= MAX_SEQ:
        return int(seq)
    raise errors.InvalidRequest(
        f"Last-Event-ID must be the seq of an event (an integer from 0 to {MAX_SEQ}); "
        f"got {value[:40]!r}",
        {"loc": ["header", "last-event-id"], "problem": "not an event seq"},
    )


@router.post("/tasks/{task_id}/cancel", status_code=202, summary="Cancel a task wherever it is")
async def cancel_task(task_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await commands.cancel(s, context.task_id_of(task_id))
    return JSON(await context.task_view(s, state), status_code=202)


@router.post(
    "/tasks/{task_id}/webhook", status_code=202, summary="Deliver the task's webhook again"
)
async def redeliver(task_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await commands.redeliver(s, context.task_id_of(task_id))
    return JSON(await context.task_view(s, state), status_code=202)
