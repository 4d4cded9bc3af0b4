"""The HTTP API (FastAPI): routes, the error shape, the door (API keys, body limits).

`create_app(build_services)` returns the ASGI app; `build_services` is awaited once at startup
(the lifespan), so the same app runs in a Ray Serve replica or in-process in tests.
Every route is under ROUTE_PREFIX; errors are `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from comfy_fleet import errors, views

from comfy_fleet.log import events, task_state
from comfy_fleet.config import Settings
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.policies import fleet_addresses
from serve_app import schemas, submission
from serve_app.services import Services

log = logging.getLogger("comfy_fleet.api")

OPEN_PATHS = ("/healthz", "/readyz")
MAX_WAIT_S = 300.0


class JSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: errors.FleetError, headers: dict[str, str] | None = None) -> JSON:
    if isinstance(exc, errors.Unavailable):
        retry = (exc.details or {}).get("retry_after_s", 2) if isinstance(exc.details, dict) else 2
        headers = {**(headers or {}), "Retry-After": str(int(retry))}
    return JSON(exc.to_json(), status_code=exc.status, headers=headers)


def _error(status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None) -> JSON:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSON({"error": body}, status_code=status, headers=headers)


class Gate:
    """Pure ASGI middleware: API keys (constant-time) and the request body limit, before any
    routing or parsing happens."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = [k.encode() for k in settings.api_keys]
        self.max_body = settings.max_body_bytes
        self.open = {settings.route_prefix + p for p in OPEN_PATHS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.keys and scope["path"] not in self.open and not self._authorized(headers):
            await _error(
                401, "unauthorized",
                "this API needs an API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="comfy-fleet"'},
            )(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _error(
                413, "payload_too_large",
                f"request body is {int(length)} bytes; the limit is {self.max_body}",
            )(scope, receive, send)
            return
        received = 0
        limit = self.max_body

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _error(
                413, "payload_too_large", f"request body exceeds the limit of {limit} bytes"
            )(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        ok = False
        for key in self.keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(key, token.strip())
        return ok


class _BodyTooLarge(StarletteHTTPException):
    """Raised from inside the body read: FastAPI turns any other exception there into a 400,
    but passes HTTP exceptions through to our handler."""

    def __init__(self) -> None:
        super().__init__(413, "request body exceeds the size limit")


def create_app(settings: Settings, build_services: Callable[[], Awaitable[Services]]) -> FastAPI:
    holder: dict[str, Services] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder["s"] = await build_services()
        try:
            yield
        finally:
            await holder["s"].close()

    app = FastAPI(
        title="comfy-fleet",
        description="Any ComfyUI workflow as a reliable, scalable HTTP service.",
        version="1.0",
        lifespan=lifespan,
        default_response_class=JSON,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.add_middleware(Gate, settings=settings)

    def svc() -> Services:
        return holder["s"]

    @app.exception_handler(errors.FleetError)
    async def _fleet_error(_req: Request, exc: errors.FleetError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "problem": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        if any(p["type"] == "json_invalid" for p in problems):
            return _error(400, "malformed_json", "the request body is not valid JSON", problems)
        where = ", ".join(".".join(p["loc"][1:] or p["loc"]) + ": " + str(p["problem"]) for p in problems[:5])
        return _error(422, "invalid_request", f"invalid request: {where}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail))

    api = APIRouter(prefix=settings.route_prefix)

    # --- tasks ------------------------------------------------------------------------------

    async def view(state: TaskState) -> dict[str, Any]:
        s = svc()
        return await views.task_view(state, s.store, s.settings.presign_expiry_s)

    async def wait_final(state: TaskState, wait_s: float) -> TaskState:
        end = time.monotonic() + wait_s
        log_ = svc().log
        while not state.is_final:
            left = end - time.monotonic()
            if left <= 0:
                break
            await log_.wait_for_change(state.task_id, state.seq, min(left, 5.0))
            state = await log_.get(state.task_id)
        return state

    @api.post("/tasks", status_code=202, summary="Submit a task")
    async def post_task(
        body: schemas.SubmitTask,
        wait: float | None = Query(default=None, ge=0, le=MAX_WAIT_S, description="seconds to hold the answer"),
    ) -> Response:
        state, created = await submission.submit(
            svc(),
            workflow_name=body.workflow,
            params=body.params,
            client_task_id=body.client_task_id,
            callback_url=body.callback_url,
            priority=body.priority,
        )
        if wait:
            state = await wait_final(state, wait)
        status = 200 if (not created or state.is_final) else 202
        return JSON(await view(state), status_code=status)

    @api.get("/tasks", summary="List tasks, newest first")
    async def list_tasks(
        client_task_id: str | None = Query(default=None, max_length=128),
        status: str | None = Query(default=None, pattern="^(queued|dispatched|running|succeeded|failed|cancelled)$"),
        workflow: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=50, ge=1, le=500),
        cursor: str | None = Query(default=None, max_length=500),
    ) -> Response:
        states, next_cursor = await svc().log.list_tasks(
            status=status, workflow=workflow, client_task_id=client_task_id, limit=limit, cursor=cursor
        )
        return JSON({"tasks": [await view(s) for s in states], "next_cursor": next_cursor})

    def task_id_of(raw: str) -> str:
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            raise errors.TaskNotFound(f"no task {raw[:64]!r}") from None

    @api.get("/tasks/{task_id}", summary="One task")
    async def get_task(task_id: str) -> Response:
        return JSON(await view(await svc().log.get(task_id_of(task_id))))

    @api.get("/tasks/{task_id}/events", summary="The task's events, in order")
    async def get_events(task_id: str) -> Response:
        tid = task_id_of(task_id)
        stream = await svc().log.read(tid)
        if not stream:
            raise errors.TaskNotFound(f"no task {tid}")
        return JSON([views.event_view(e) for e in stream])

    @api.get("/tasks/{task_id}/stream", summary="Server-Sent Events of the task's events")
    async def stream_task(task_id: str, request: Request) -> Response:
        tid = task_id_of(task_id)
        s = svc()
        last = request.headers.get("last-event-id", "0")
        after = int(last) if last.isdigit() else 0
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
                await s.log.wait_for_change(tid, after, 15.0)
                if not batch:
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            frames(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.post("/tasks/{task_id}/cancel", status_code=202, summary="Cancel a task wherever it is")
    async def cancel_task(task_id: str) -> Response:
        s = svc()
        tid = task_id_of(task_id)
        state = await s.log.get(tid)
        if not state.is_final:
            if not state.cancel_requested:
                with contextlib.suppress(errors.ConcurrencyConflict):
                    state = await s.log.append(tid, state.seq, [events.TaskCancelRequested()], state)
            where = await s.router.cancel(tid)
            if where == "removed":
                state = await _append_final(s, tid, events.TaskCancelled(where="router"))
            state = await wait_final(await s.log.get(tid), 2.0)
        return JSON(await view(state), status_code=202)

    @api.post("/tasks/{task_id}/webhook", status_code=202, summary="Deliver the task's webhook again")
    async def redeliver(task_id: str) -> Response:
        s = svc()
        tid = task_id_of(task_id)
        state = await s.log.get(tid)
        if not state.callback_url:
            raise errors.Conflict("the task has no callback_url")
        if not state.is_final:
            raise errors.Conflict(f"the task has not ended (status {state.status})")
        if state.webhook != task_state.WEBHOOK_PENDING:
            state = await s.log.append(tid, state.seq, [events.WebhookRedeliveryRequested()], state)
        await s.webhooks.task_ended(tid)
        return JSON(await view(state), status_code=202)

    # --- workflows and endpoints -----------------------------------------------------------

    @api.get("/workflows", summary="The served workflows and their parameters (JSON Schema)")
    async def list_workflows() -> Response:
        s = svc()
        return JSON([w.describe(max_string_length=s.settings.max_string_length) for w in s.registry.workflows()])

    @api.get("/workflows/{name}", summary="One workflow")
    async def get_workflow(name: str) -> Response:
        s = svc()
        return JSON(s.registry.get(name).describe(max_string_length=s.settings.max_string_length))

    @api.post("/workflows/reload", summary="Pick up added, changed and removed workflows")
    async def reload_workflows() -> Response:
        s = svc()
        result = s.registry.reload()
        # The endpoints re-learn which workflows they can run, so routing follows at once.
        runnable = await s.router.reload_workflows()
        return JSON({**result.to_json(), "endpoints": runnable}, status_code=200)

    @api.get("/endpoints", summary="The ComfyUI endpoints")
    async def list_endpoints() -> Response:
        return JSON(await svc().router.endpoint_statuses())

    @api.post("/endpoints", status_code=201, summary="Add a ComfyUI endpoint at run time")
    async def add_endpoint(body: schemas.AddEndpoint) -> Response:
        from comfy_fleet.comfy import probe
        from comfy_fleet.config import parse_endpoint

        s = svc()
        try:
            ep = parse_endpoint(body.endpoint, "endpoint")
        except errors.ConfigError as exc:
            raise errors.InvalidRequest(str(exc)) from None
        fleet = s.url_policy.fleet
        # Nothing recorded for what the URL policy refuses or what does not answer as a ComfyUI.
        await probe.check_endpoint(
            ep.host, ep.port, fleet.current if fleet else fleet_addresses.FleetSnapshot(),
            scheme=ep.scheme,
        )
        # Denied to callbacks and image URLs before it can run anything: here, in the webhook
        # actor (the router tells it too), in other replicas at their next refresh.
        if fleet is not None:
            fleet.add(ep.name)
        await s.webhooks.fleet_add(ep.name)
        result = await s.router.add_endpoint(ep.name, body.labels)
        await _refresh_fleet(s)
        return JSON(result, status_code=201)

    @api.delete("/endpoints/{endpoint}", status_code=202, summary="Drain and remove an endpoint")
    async def remove_endpoint(endpoint: str) -> Response:
        s = svc()
        result = await s.router.remove_endpoint(endpoint)
        await _refresh_fleet(s)
        return JSON(result, status_code=202)

    # --- health -----------------------------------------------------------------------------

    @api.get("/healthz", summary="Alive")
    async def healthz() -> Response:
        return JSON({"status": "ok"})

    @api.get("/readyz", summary="Database reachable and at least one endpoint connected")
    async def readyz() -> Response:
        s = svc()
        checks: dict[str, Any] = {}
        try:
            await asyncio.wait_for(s.log.ping(), 3)
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        try:
            stats = await asyncio.wait_for(s.router.stats(), 3)
            connected = sum(1 for e in stats["endpoints"].values() if e["connected"])
            checks["endpoints_connected"] = connected
            s.waiting_estimate = stats["waiting"]
        except Exception:
            checks["endpoints_connected"] = 0
        ready = checks["database"] == "ok" and checks["endpoints_connected"] > 0
        return JSON({"ready": ready, **checks}, status_code=200 if ready else 503)

    # --- the original ComfyUI-server route --------------------------------------------------

    @api.post("", summary="The original ComfyUI-server API (kept for its clients)")
    async def legacy_submit(body: schemas.LegacySubmit) -> Response:
        from serve_app import legacy

        return await legacy.submit(svc(), body, view)

    app.include_router(api)
    return app


async def _refresh_fleet(s: Services) -> None:
    if s.fleet_refresher is not None:
        await s.fleet_refresher.refresh()


async def _append_final(s: Services, task_id: str, event: events.Event) -> TaskState:
    for _ in range(5):
        state = await s.log.get(task_id)
        if state.is_final:
            return state
        try:
            state = await s.log.append(task_id, state.seq, [event], state)
        except errors.ConcurrencyConflict:
            continue
        if state.is_final:
            from actors import metrics

            metrics.task_ended(state.workflow, state.status)
            await s.webhooks.task_ended(task_id)
        return state
    return await s.log.get(task_id)
