"""The error shape `{"error": {"code", "message", "details"}}` and the error answers a route
documents (`responses=errors.answers(401, 404, …)`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    model_config = ConfigDict(title="ErrorBody")

    code: str = Field(description="snake_case code, stable: branch on it")
    message: str = Field(description="What went wrong, for a person")
    details: Any = Field(
        default=None,
        description="What the code needs to say more (absent when there is nothing): for "
        "invalid requests, a list of `{loc, problem, type}`",
    )


class Error(BaseModel):
    """Every refusal of the API, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "task_not_found", "message": "no task 'f00'"}},
            ]
        }
    )

    error: ErrorBody


#: When each error status is answered, and an example of its body.
_ERRORS: dict[int, tuple[str, str, str, Any]] = {
    400: ("The request body is not JSON", "malformed_json",
          "the request body is not valid JSON", None),
    401: ("No valid API key (only when API_KEYS is set): send `Authorization: Bearer <key>`",
          "unauthorized", "this API needs an API key: send 'Authorization: Bearer <key>'", None),
    403: ("The key may not do this", "forbidden", "this key may not change the fleet", None),
    404: ("Nothing by that name or id", "task_not_found", "no task 'f00'", None),
    409: ("Conflicts with what is recorded (e.g. a client_task_id reused for another body)",
          "client_task_id_conflict", "client_task_id 'a1' was used for another request", None),
    413: ("The request body (or an image in it) is over its size limit", "payload_too_large",
          "request body is 9000000 bytes; the limit is 8388608", None),
    422: ("The request is well-formed JSON but invalid: `details` names each problem",
          "invalid_request", "invalid request: workflow: Field required",
          [{"loc": ["body", "workflow"], "problem": "Field required", "type": "missing"}]),
    429: ("Too many tasks waiting: retry after `Retry-After` seconds", "overloaded",
          "too many tasks are waiting; retry later", {"retry_after_s": 2}),
    503: ("A part the request needs is unavailable: retry after `Retry-After` seconds",
          "database_unavailable", "the database is unavailable", None),
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'The scheme to use: `Bearer realm="comfy-fleet"`',
        "schema": {"type": "string"},
    }
}


def answer(status: int, example: tuple[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI answer of one error status: the error shape, an example (its code and
    message: `example`, else the status's usual one), its headers."""
    description, code, message, details = _ERRORS[status]
    if example is not None:
        code, message = example
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    doc: dict[str, Any] = {
        "model": Error,
        "description": description,
        "content": {"application/json": {"example": {"error": body}}},
    }
    if status in (429, 503):
        doc["headers"] = _RETRY_AFTER
    elif status == 401:
        doc["headers"] = _WWW_AUTHENTICATE
    return doc


def answers(
    *statuses: int, examples: dict[int, tuple[str, str]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each of `statuses`, in the error shape (`examples`: the
    route's own code and message for some of them)."""
    return {status: answer(status, (examples or {}).get(status)) for status in statuses}


#: The 404 examples of the routes that name a workflow or an endpoint.
NO_WORKFLOW = {404: ("workflow_not_found", "no workflow named 'x' (available: solid, invert)")}
NO_ENDPOINT = {404: ("endpoint_not_found", "no endpoint 'x'; GET /endpoints lists them")}


#: What any route behind the key answers when its key is missing or wrong.
AUTH = (401,)
#: What a route with a JSON body may answer for the body itself.
BODY = (400, 413, 422)
