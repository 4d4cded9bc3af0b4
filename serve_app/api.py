"""The HTTP API (FastAPI): the app factory.

`create_app(settings, build_services)` returns the ASGI app; `build_services` is awaited once at
startup (the lifespan), so the same app runs in a Ray Serve replica or in-process in tests.
Every route is under ROUTE_PREFIX (`serve_app.routes`); errors are
`{"error": {"code", "message", "details"}}` (`serve_app.responses`); the door is
`serve_app.middleware` (who is asking, how much they send, how it is shaped).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI

from comfy_fleet.config import Settings
from serve_app import console, responses
from serve_app.models import document
from serve_app.middleware import auth, body_limit, json_bounds
from serve_app.routes import batches, endpoints, health, legacy, tasks, workflows
from serve_app.services import Services


def create_app(settings: Settings, build_services: Callable[[], Awaitable[Services]]) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await build_services()
        try:
            yield
        finally:
            await app.state.services.close()

    app = FastAPI(
        title="comfy-fleet",
        description="Any ComfyUI workflow as a reliable, scalable HTTP service.",
        version="1.0",
        lifespan=lifespan,
        default_response_class=responses.JSON,
        docs_url="/docs",
        openapi_url="/openapi.json",
        openapi_tags=document.TAGS,
    )
    # The last added runs first: authenticate, then limit the body of who is let in, then
    # bound the shape of that body before anything parses it.
    app.add_middleware(json_bounds.JsonBounds)
    app.add_middleware(body_limit.BodyLimit, settings=settings)
    app.add_middleware(auth.Authenticate, settings=settings)
    responses.install_handlers(app)

    for resource in (tasks, batches, workflows, endpoints, health, legacy):
        app.include_router(resource.router, prefix=settings.route_prefix)
    console.mount(app, settings)
    document.install(app, keys_required=bool(settings.api_keys))
    return app
