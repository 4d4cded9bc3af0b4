"""Finishing the OpenAPI document FastAPI builds from the routes: the bearer scheme on every
route behind a key, the one error shape in place of FastAPI's `{"detail": …}` 422, and tag
descriptions. `install(app)` makes `app.openapi()` (and so `GET /openapi.json`) return it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

#: The security scheme's name in `components.securitySchemes`.
BEARER = "bearer"

#: Operations that answer without a key (`serve_app.middleware.auth.OPEN_PATHS`).
OPEN_OPERATIONS = frozenset({"healthz", "readyz"})

TAGS: list[dict[str, str]] = [
    {"name": "tasks", "description": "Submit tasks, follow them, cancel them."},
    {"name": "batches", "description": "Submit many tasks at once (a list or a sweep), follow "
     "and cancel them together."},
    {"name": "workflows", "description": "The served workflows and their parameters."},
    {"name": "endpoints", "description": "The fleet's ComfyUI servers."},
    {"name": "health", "description": "For load balancers: no key needed."},
    {"name": "legacy", "description": "The original ComfyUI-server route, kept for its clients."},
]

_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def build(app: FastAPI, *, keys_required: bool = True) -> dict[str, Any]:
    """The document of `app`'s routes, finished (see the module docstring). Without keys
    (`keys_required` false: no API_KEYS, loopback) the bearer key is documented as optional,
    which is what the service does then."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=TAGS,
    )
    components = doc.setdefault("components", {})
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of API_KEYS, needed only when the service has keys set",
        }
    }
    security: list[dict[str, list[str]]] = [{BEARER: []}] if keys_required else [{BEARER: []}, {}]
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            _finish(operation, security)
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _restore_examples(schemas)
    return doc


def _restore_examples(schemas: dict[str, Any]) -> None:
    """FastAPI drops every null from the document (`exclude_none`), examples' nulls too, which
    leaves a task example without its required `callback_url`: put the models' own back."""
    from serve_app.models import endpoints, health, legacy, tasks, workflows

    for module in (endpoints, health, legacy, tasks, workflows):
        for model in vars(module).values():
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                continue
            extra = model.model_config.get("json_schema_extra")
            if isinstance(extra, dict) and model.__name__ in schemas and "examples" in extra:
                schemas[model.__name__]["examples"] = extra["examples"]


def _finish(operation: dict[str, Any], security: list[dict[str, list[str]]]) -> None:
    if operation.get("operationId") not in OPEN_OPERATIONS:
        operation["security"] = security
    responses = operation.get("responses", {})
    default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
    if default_422.get("schema", {}).get("$ref") == _FASTAPI_422:
        # FastAPI adds its own 422 to every route with parameters; the routes that can answer
        # 422 declare it (in the error shape), so this one cannot happen.
        del responses["422"]


def install(app: FastAPI, *, keys_required: bool) -> None:
    """Serve the finished document (built once, on first use, as FastAPI does)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, keys_required=keys_required)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
