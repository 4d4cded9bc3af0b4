"""The API's answers: JSON rendered by orjson, and the one error shape
`{"error": {"code", "message", "details"}}` for every refusal, whoever raises it."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from comfy_fleet import errors


class JSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSON:
    """An error answer in the contract's shape (`details` only when there are some)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSON({"error": body}, status_code=status, headers=headers)


def fleet_error(exc: errors.FleetError, headers: dict[str, str] | None = None) -> JSON:
    """The answer for a FleetError: its status and code; `Retry-After` when it is retryable."""
    if isinstance(exc, errors.Unavailable):
        retry = (exc.details or {}).get("retry_after_s", 2) if isinstance(exc.details, dict) else 2
        headers = {**(headers or {}), "Retry-After": str(int(retry))}
    return JSON(exc.to_json(), status_code=exc.status, headers=headers)


async def _on_fleet_error(_req: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.FleetError)
    return fleet_error(exc)


async def _on_validation(_req: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": [str(p) for p in e.get("loc", ())], "problem": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return error(400, "malformed_json", "the request body is not valid JSON", problems)
    where = ", ".join(
        ".".join(p["loc"][1:] or p["loc"]) + ": " + str(p["problem"]) for p in problems[:5]
    )
    return error(422, "invalid_request", f"invalid request: {where}", problems)


async def _on_http(req: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's Allow stays for paths the document does not hold (/openapi.json, /docs).
        documented = allowed_methods(req)
        if documented:
            headers["Allow"] = ", ".join(sorted(documented))
    return error(exc.status_code, code, str(exc.detail), headers=headers or None)


def allowed_methods(req: Request) -> set[str]:
    """The methods the OpenAPI document gives the request's path (RFC 9110: a 405 names them
    in `Allow`). Starlette's own 405 names only the first route matching the path, and a path
    such as /tasks has one route per method. As in OpenAPI, a path without parameters wins
    over a templated one that also matches (/workflows/reload over /workflows/{name})."""
    app = req.app
    table: list[tuple[re.Pattern[str], bool, set[str]]] | None = getattr(
        app.state, "allow_table", None
    )
    if table is None:
        table = [
            (compile_path(path)[0], "{" not in path, {m.upper() for m in operations})
            for path, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allow_table = table
    matches = [(literal, methods) for pattern, literal, methods in table
               if pattern.match(req.url.path)]
    literal = [methods for is_literal, methods in matches if is_literal]
    return set().union(*(literal or [methods for _l, methods in matches]))


def install_handlers(app: FastAPI) -> None:
    """Every FleetError, request validation error and HTTP error answers in the error shape."""
    app.add_exception_handler(errors.FleetError, _on_fleet_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
