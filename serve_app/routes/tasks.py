"""/tasks: submit, list, read, stream, rerun, cancel and redeliver tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from comfy_fleet import errors, views
from comfy_fleet.log import events
from comfy_fleet.policies import access
from comfy_fleet.workflows import raw_graph
from serve_app import batches, commands, preview_relay, queue_feed, schemas
from serve_app.models import errors as error_answers
from serve_app.models import tasks as models
from serve_app.responses import JSON
from serve_app.routes import context

# The routes return prebuilt JSON (orjson, from `views`): FastAPI sends a returned Response as
# it is, so `response_model` documents the answer without validating it per request (that
# would cost 15-45 µs per task, more than the rest of GET /tasks/{id} in-process).
router = APIRouter(tags=["tasks"])

_ANSWERED = "The task, as it is now"

#: How long the stream waits for a new event before sending a keep-alive comment.
KEEP_ALIVE_S = 15.0
#: The largest seq an event can have (the log's `seq integer` column).
MAX_SEQ = 2**31 - 1

STREAM_FRAMES = (
    "Frames `id: <seq>`, `event: <type>`, `data: <the event as GET /tasks/{task_id}/events "
    "shows it, one JSON object>`, each ended by a blank line; `: keep-alive` comment lines "
    "while nothing happens. The stream ends after the task's final event (`task.succeeded`, "
    "`task.failed` or `task.cancelled`). With `?previews=true`, also `event: preview` frames "
    "without `id:`, `data: {\"content_type\", \"data\": <the image, base64>}`: ComfyUI's latest "
    "latent preview while the task runs (a slow reader gets the newest, not every one); "
    "previews are not events of the task and are never recorded. While the task has not "
    "ended, also `event: queue` frames without `id:`, `data: {\"position\", \"eta_s\"}` (as the "
    "task's `queue`): once on connect and whenever its position changes (0 once it runs); "
    "never recorded either."
)
STREAM_DESCRIPTION = (
    "`text/event-stream` of the task's events, from its first (or after `Last-Event-ID`), "
    "live until the task ends. " + STREAM_FRAMES + " Event types are those of "
    "`TaskEvent.type`: task.submitted, task.model_fetched, task.dispatched, task.prompt_queued, task.started, "
    "task.progressed, task.output_stored, task.succeeded, task.failed, task.requeued, "
    "task.outputs_recovered, task.cancel_requested, task.cancelled, webhook.attempted, "
    "webhook.delivered, webhook.dead, webhook.redelivery_requested."
)
#: One Server-Sent Event of the stream (OpenAPI 3.2's reading of a `text/event-stream`
#: schema, and what generators and checkers take before 3.2: the schema of each event).
STREAM_EVENT_SCHEMA = {
    "type": "object",
    "description": STREAM_FRAMES,
    "properties": {
        "id": {"type": "string", "description": "the event's seq (send it as Last-Event-ID)"},
        "event": {
            "type": "string",
            "description": "the event's type, e.g. task.progressed; `preview` for a preview, "
            "`queue` for the task's queue position",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [
                {"$ref": "#/components/schemas/TaskEvent"},
                models.TaskPreview.model_json_schema(),
                models.QueuePlace.model_json_schema(),
            ]},
        },
    },
    "required": ["data"],
}
STREAM_EXAMPLE = (
    'id: 1\nevent: task.submitted\ndata: {"seq":1,"type":"task.submitted",'
    '"at":"2026-12-07T07:00:00.000000Z","data":{"workflow":"solid","params":{}}}\n\n'
    'id: 5\nevent: task.succeeded\ndata: {"seq":5,"type":"task.succeeded",'
    '"at":"2026-12-07T07:00:01.200000Z","data":{"prompt_id":"5f1c6e0a"}}\n\n'
)


@router.post(
    "/tasks",
    status_code=202,
    summary="Submit a task",
    operation_id="createTask",
    response_model=models.Task,
    response_description="The task, recorded (still running, or unended when `wait` ran out)",
    responses={
        200: {
            "model": models.Task,
            "description": "The task already submitted with this `client_task_id` and body "
            "(nothing new is started), or the task ended within `wait`",
        },
        **error_answers.answers(*error_answers.AUTH, 403, *error_answers.BODY, 409, 429, 503),
    },
)
async def post_task(
    body: schemas.SubmitTask,
    request: Request,
    wait: float | None = Query(
        default=None, ge=0, le=commands.MAX_WAIT_S, description="seconds to hold the answer"
    ),
) -> Response:
    s = context.services(request)
    tenant = access.submit_tenant(context.principal(request), body.tenant)
    state, created = await commands.submit(
        s,
        workflow_name=body.workflow or raw_graph.WORKFLOW,
        params=body.params,
        client_task_id=body.client_task_id,
        callback_url=body.callback_url,
        priority=body.priority,
        graph=body.graph,
        files=body.files,
        principal=context.principal(request),
        tenant=tenant,
        workflow_version=body.workflow_version,
    )
    if wait:
        state = await commands.wait_final(s, state, wait)
    status = 200 if (not created or state.is_final) else 202
    return JSON(await context.task_view(s, state), status_code=status)


@router.get(
    "/tasks",
    summary="List tasks, newest first",
    operation_id="listTasks",
    response_model=models.TaskPage,
    responses=error_answers.answers(*error_answers.AUTH, 403, 422, 503),
)
async def list_tasks(
    request: Request,
    client_task_id: str | None = Query(default=None, max_length=128),
    status: str | None = Query(
        default=None, pattern="^(queued|dispatched|running|succeeded|failed|cancelled)$"
    ),
    workflow: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=500),
    # Checked by policies.access: a tenant key naming another tenant is 403, whatever the name.
    tenant: str | None = Query(default=None, description="an admin's filter by tenant"),
    batch_id: str | None = Query(default=None, max_length=64, description="tasks of one batch"),
) -> Response:
    s = context.services(request)
    principal = context.principal(request)
    tenant = access.list_tenant(principal, tenant)
    if batch_id is not None:
        # Another tenant's batch, or no batch: no tasks (its existence is not revealed).
        try:
            batch_id = (await batches.get(s, batch_id, principal)).batch_id
        except errors.BatchNotFound:
            return JSON({"tasks": [], "next_cursor": None})
    states, next_cursor = await s.log.list_tasks(
        status=status, workflow=workflow, client_task_id=client_task_id, limit=limit,
        cursor=cursor, tenant=tenant, batch_id=batch_id,
    )
    # One router call for the page's tasks not ended (their queue position and ETA).
    places = await context.queue_places(s, states)
    tasks = [
        await views.task_view(state, s.store, s.settings.presign_expiry_s, places.get(state.task_id))
        for state in states
    ]
    return JSON({"tasks": tasks, "next_cursor": next_cursor})


@router.get(
    "/tasks/{task_id}",
    summary="One task",
    operation_id="getTask",
    response_model=models.Task,
    response_description=_ANSWERED,
    responses=error_answers.answers(*error_answers.AUTH, 404, 503),
)
async def get_task(task_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await context.own_task(request, s, context.task_id_of(task_id))
    return JSON(await context.task_view(s, state, queue=True))


@router.get(
    "/tasks/{task_id}/events",
    summary="The task's events, in order",
    operation_id="getTaskEvents",
    response_model=list[models.TaskEvent],
    responses=error_answers.answers(*error_answers.AUTH, 404, 503),
)
async def get_events(task_id: str, request: Request) -> Response:
    tid = context.task_id_of(task_id)
    stream = await context.services(request).log.read(tid)
    context.check_stream(request, tid, stream)
    return JSON([views.event_view(e) for e in stream])


@router.get(
    "/tasks/{task_id}/stream",
    summary="Server-Sent Events of the task's events",
    description=STREAM_DESCRIPTION,
    operation_id="streamTask",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The task's events as Server-Sent Events, live until it ends",
            "content": {
                "text/event-stream": {
                    "schema": STREAM_EVENT_SCHEMA,
                    "example": STREAM_EXAMPLE,
                }
            },
        },
        **error_answers.answers(*error_answers.AUTH, 404, 422, 503),
    },
)
async def stream_task(
    task_id: str,
    request: Request,
    previews: bool = Query(
        default=False,
        description="also send `event: preview` frames: ComfyUI's latent previews while the "
        "task runs (never recorded)",
    ),
    last_event_id_header: str | None = Header(
        default=None,
        alias="Last-Event-ID",
        description="Resume after this event's seq (what a browser's EventSource sends)",
        examples=["3"],
    ),
) -> Response:
    tid = context.task_id_of(task_id)
    s = context.services(request)
    after = last_event_id(last_event_id_header)
    history = await s.log.read(tid, 0)
    context.check_stream(request, tid, history)
    # event: queue lines while the task has not ended (asks the router only while it waits)
    feed = queue_feed.QueueFeed(s, tid, (e.event.TYPE for e in history))

    # Previews only when asked for, and only where the endpoints can be reached (over Ray).
    relay = (
        preview_relay.PreviewRelay(s.log, tid, s.endpoints)
        if previews and s.endpoints is not None else None
    )

    async def frames() -> AsyncIterator[bytes]:
        nonlocal after
        if relay is not None:
            relay.start()
        try:
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
                feed.observe(e.event.TYPE for e in batch)
                if (line := await feed.line()) is not None:
                    yield line
                if relay is not None and batch:
                    relay.task_changed()
                if relay is None and feed.polling:
                    # the task waits: its place, asked every POLL_S until the log changes
                    wait = s.log.wait_for_change(tid, after, KEEP_ALIVE_S)
                    async for line in feed.during(wait):
                        yield line
                elif relay is None:
                    await s.log.wait_for_change(tid, after, KEEP_ALIVE_S)
                else:
                    # previews too: while the task waits, come back every POLL_S for its place
                    timeout = queue_feed.POLL_S if feed.polling else KEEP_ALIVE_S
                    async for line in relay.during(s.log.wait_for_change(tid, after, timeout)):
                        yield line
                if not batch:
                    yield b": keep-alive\n\n"
        finally:
            # the task ended or the client left: no preview loop outlives the stream
            if relay is not None:
                await relay.close()

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


@router.post(
    "/tasks/{task_id}/rerun",
    status_code=202,
    summary="Run a task again, as a new task",
    description="A new task of the same workflow version, params and kept image inputs, "
    "changed by `params`; seeds the task drew are drawn afresh unless `same_seed`. Its "
    "`rerun_of` names this task; its outputs are made and stored anew.",
    operation_id="rerunTask",
    response_model=models.Task,
    response_description="The new task, recorded",
    responses=error_answers.answers(*error_answers.AUTH, *error_answers.BODY, 404, 409, 429, 503),
)
async def rerun_task(
    task_id: str, request: Request, body: schemas.RerunTask | None = None
) -> Response:
    s = context.services(request)
    body = body or schemas.RerunTask()
    state = await commands.rerun(
        s, context.task_id_of(task_id), context.principal(request), overrides=body.params,
        priority=body.priority, same_seed=body.same_seed, callback_url=body.callback_url,
    )
    return JSON(await context.task_view(s, state), status_code=202)


@router.post(
    "/tasks/{task_id}/cancel",
    status_code=202,
    summary="Cancel a task wherever it is",
    operation_id="cancelTask",
    response_model=models.Task,
    response_description="The task after a short wait for its end: `cancelled`, or the end it "
    "reached first",
    responses=error_answers.answers(*error_answers.AUTH, 404, 503),
)
async def cancel_task(task_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await commands.cancel(s, context.task_id_of(task_id), context.principal(request))
    return JSON(await context.task_view(s, state), status_code=202)


@router.post(
    "/tasks/{task_id}/webhook",
    status_code=202,
    summary="Deliver the task's webhook again",
    operation_id="redeliverWebhook",
    response_model=models.Task,
    response_description="The task, its webhook `pending` again",
    responses=error_answers.answers(*error_answers.AUTH, 404, 409, 503),
)
async def redeliver(task_id: str, request: Request) -> Response:
    s = context.services(request)
    state = await commands.redeliver(s, context.task_id_of(task_id), context.principal(request))
    return JSON(await context.task_view(s, state), status_code=202)
