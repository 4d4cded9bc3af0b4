"""Request building and response parsing, shared by `Client` and `AsyncClient`.

Each operation is a function returning a `Call`: what to send and how to read the answer.
The clients only perform calls, so both speak exactly the same API. Pure: no I/O.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from comfy_fleet_client import errors, models

T = TypeVar("T")

#: The server when none is given (COMFY_FLEET_URL overrides it).
DEFAULT_URL = "http://127.0.0.1:8000/api/v1"
#: Longest `?wait=` the service accepts on POST /tasks, in seconds.
MAX_SERVER_WAIT_S = 300.0
USER_AGENT = "comfy-fleet-client/0.1"


def settings_from_env(
    url: str | None, key: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """(url, key): the arguments when given, else COMFY_FLEET_URL / COMFY_FLEET_KEY, else the
    default URL and no key."""
    env = os.environ if environ is None else environ
    return (url or env.get("COMFY_FLEET_URL") or DEFAULT_URL).rstrip("/"), key or env.get("COMFY_FLEET_KEY") or None


def base_headers(key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None


def result(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or the error tree's exception for an error status."""
    if response.status_code >= 400:
        raise errors.from_response(response)
    try:
        body = response.json()
    except ValueError:
        raise errors.ComfyFleetError(
            f"{call.method} {call.path} answered {response.status_code} with no JSON "
            f"(is {response.request.url} a comfy-fleet API?)",
            code="bad_response",
            status=response.status_code,
        ) from None
    return call.parse(body)


def _seg(value: str) -> str:
    """One path segment, escaped (a task id never contains '/', but a typo might)."""
    return quote(str(value), safe="")


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    """The body without unset fields: the service refuses unknown ones and treats absent
    ones as their defaults, so None is never sent."""
    return {k: v for k, v in body.items() if v is not None}


_tasks = TypeAdapter(list[models.Task])
_events = TypeAdapter(list[models.Event])
_workflows = TypeAdapter(list[models.Workflow])
_endpoints = TypeAdapter(list[models.Endpoint])


def task_body(
    workflow: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    graph: Mapping[str, Any] | None = None,
    files: Mapping[str, str | bytes] | None = None,
    client_task_id: str | None = None,
    callback_url: str | None = None,
    priority: int | None = None,
    tenant: str | None = None,
    workflow_version: str | None = None,
) -> dict[str, Any]:
    """A `POST /tasks` body (also one item of a batch's `tasks`): a served workflow by name with
    its `params`, or a raw API-format `graph` (the service needs RAW_GRAPHS=true) with the
    `files` its LoadImage nodes name: file name -> base64, a data: URL or an http(s) URL as a
    string, or the image's bytes (sent as base64). Raise ValueError when both or neither of
    `workflow` and `graph` is given, or `params`/`files` come with the other one."""
    if (workflow is None) == (graph is None):
        raise ValueError("give either `workflow` (a served workflow's name) or `graph`")
    if graph is not None and params:
        raise ValueError("`params` are a workflow's; a graph carries its own values")
    if files is not None and graph is None:
        raise ValueError("`files` go with a `graph`; a workflow takes images as params")
    if graph is not None:
        head: dict[str, Any] = {"graph": dict(graph), "files": _files(files)}
    else:
        head = {"workflow": workflow, "params": dict(params or {})}
    return _compact(
        {
            **head,
            "client_task_id": client_task_id,
            "callback_url": callback_url,
            "priority": priority,
            "tenant": tenant,
            "workflow_version": workflow_version,
        }
    )


def _files(files: Mapping[str, str | bytes] | None) -> dict[str, str] | None:
    """`files` as the service takes them: bytes become base64, strings go as given."""
    if files is None:
        return None
    return {name: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v
            for name, v in files.items()}


def submit(body: dict[str, Any], wait: float | None = None) -> Call[models.Task]:
    params: dict[str, Any] = {}
    if wait:
        params["wait"] = min(float(wait), MAX_SERVER_WAIT_S)
    return Call("POST", "/tasks", models.Task.model_validate, params=params, json=body)


def get(task_id: str) -> Call[models.Task]:
    return Call("GET", f"/tasks/{_seg(task_id)}", models.Task.model_validate)


def list_page(
    *,
    status: str | None = None,
    workflow: str | None = None,
    client_task_id: str | None = None,
    batch_id: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[models.TaskPage]:
    params = _compact(
        {
            "status": status,
            "workflow": workflow,
            "client_task_id": client_task_id,
            "batch_id": batch_id,
            "tenant": tenant,
            "limit": limit,
            "cursor": cursor,
        }
    )
    return Call("GET", "/tasks", models.TaskPage.model_validate, params=params)


def events(task_id: str) -> Call[list[models.Event]]:
    return Call("GET", f"/tasks/{_seg(task_id)}/events", _events.validate_python)


def stream_path(task_id: str) -> str:
    return f"/tasks/{_seg(task_id)}/stream"


def stream_params(previews: bool) -> dict[str, str]:
    return {"previews": "true"} if previews else {}


def cancel(task_id: str) -> Call[models.Task]:
    return Call("POST", f"/tasks/{_seg(task_id)}/cancel", models.Task.model_validate)


def rerun(
    task_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    priority: int | None = None,
    same_seed: bool | None = None,
) -> Call[models.Task]:
    body = _compact(
        {"params": dict(params) if params else None, "priority": priority, "same_seed": same_seed}
    )
    return Call("POST", f"/tasks/{_seg(task_id)}/rerun", models.Task.model_validate, json=body)


def redeliver_webhook(task_id: str) -> Call[models.Task]:
    return Call("POST", f"/tasks/{_seg(task_id)}/webhook", models.Task.model_validate)


def workflows() -> Call[list[models.Workflow]]:
    return Call("GET", "/workflows", _workflows.validate_python)


def workflow(name: str) -> Call[models.Workflow]:
    return Call("GET", f"/workflows/{_seg(name)}", models.Workflow.model_validate)


def endpoints() -> Call[list[models.Endpoint]]:
    return Call("GET", "/endpoints", _endpoints.validate_python)


def create_batch(
    *,
    tasks: list[dict[str, Any]] | None = None,
    workflow: str | None = None,
    params: Mapping[str, Any] | None = None,
    sweep: Mapping[str, list[Any]] | None = None,
    client_batch_id: str | None = None,
    callback_url: str | None = None,
    priority: int | None = None,
    tenant: str | None = None,
    workflow_version: str | None = None,
) -> Call[models.Batch]:
    """`POST /batches` (CONTRACT §7.2): either `tasks` (bodies from `task_body`, each anything
    `POST /tasks` takes: a pinned version, a raw graph, ...) or a `workflow` with `params`, a
    `sweep` of lists and optionally the `workflow_version` every task of the sweep runs."""
    if (tasks is None) == (workflow is None):
        raise ValueError("give either tasks or workflow (with sweep), not both or neither")
    if workflow is not None and not sweep:
        raise ValueError("a workflow batch needs a sweep: {param: [values, ...]}")
    if workflow_version is not None and workflow is None:
        raise ValueError("workflow_version goes with a sweep's workflow; pin each of tasks in its body")
    body = _compact(
        {
            "tasks": tasks,
            "workflow": workflow,
            "params": dict(params or {}) if workflow is not None else None,
            "sweep": {k: list(v) for k, v in sweep.items()} if sweep else None,
            "client_batch_id": client_batch_id,
            "callback_url": callback_url,
            "priority": priority,
            "tenant": tenant,
            "workflow_version": workflow_version,
        }
    )
    return Call("POST", "/batches", models.Batch.model_validate, json=body)


def get_batch(batch_id: str) -> Call[models.Batch]:
    return Call("GET", f"/batches/{_seg(batch_id)}", models.Batch.model_validate)


def cancel_batch(batch_id: str) -> Call[models.Batch]:
    return Call("POST", f"/batches/{_seg(batch_id)}/cancel", models.Batch.model_validate)


def stream_response_error(response: httpx.Response) -> errors.ComfyFleetError | None:
    """The error of a stream's opening answer, or None when it is an event stream. The body
    must have been read."""
    if response.status_code >= 400:
        return errors.from_response(response)
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return errors.ComfyFleetError(
            f"the stream answered {response.headers.get('content-type')!r}, not text/event-stream",
            code="bad_response",
            status=response.status_code,
        )
    return None


def is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")
