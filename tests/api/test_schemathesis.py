"""The OpenAPI document, proven against the running service with Schemathesis: requests
generated from the document (its examples, boundary values, then random ones; valid and
invalid) go to the real service (Ray Serve, PostgreSQL, S3, ComfyUI stand-ins), and every
answer must be documented: no 5xx, a documented status and content type, a body matching the
documented schema, `Allow` on a 405, and every error in the error shape.

Bounded and repeatable: `MAX_EXAMPLES` per operation and mode, a fixed seed, derandomized.
The shared fleet has no keys: the key check is `tests/unit/test_openapi.py`, against the app
with API_KEYS set. What is not sent here, and why:
- a valid `POST /endpoints` body: it would add a ComfyUI to the shared fleet (an actor per
  address); invalid ones are sent. `DELETE /endpoints/{endpoint}` never names one of the fleet.
- the stream's body for a live task never ends: `test_stream_answers_server_sent_events`
  reads a finished task's stream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import BaseModel, ValidationError
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events as st_events

from serve_app import schemas
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: Examples per operation and generation mode (positive, negative).
MAX_EXAMPLES = 20
SEED = 14
#: An address no ComfyUI has (port 0 is refused): what an add would otherwise send.
NO_ENDPOINT = "absent.invalid:0"


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is `{"error": {"code", "message"[, "details"]}}`, whatever its
    status (readyz's 503 is its readiness body, documented as such)."""
    if response.status_code < 400 or case.operation.definition.raw.get("operationId") == "readyz":
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], f"no code: {body}"
    assert isinstance(error.get("message"), str), f"no message: {body}"
    assert set(error) <= {"code", "message", "details"}, f"unknown keys: {body}"
    return True


def _config(base_url: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "request-timeout": 30,
            # Generation is fast; the service's answers are slow I/O by Hypothesis' measure.
            "suppress-health-check": ["all"],
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "mode": "all",
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                # The fleet has no keys (loopback): routes answer without one, as documented.
                "ignored_auth": {"enabled": False},
                # A body valid by the schema may still name a workflow that is not served, a
                # task that does not exist, or a reused client_task_id: 404/409/422 by design.
                "positive_data_acceptance": {"enabled": False},
            },
        }
    )


def _accepted(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


def _schema(fleet: Fleet) -> Any:
    root = fleet.url.removesuffix(fleet.settings.route_prefix)
    return schemathesis.openapi.from_url(root + "/openapi.json", config=_config(root))


def _endpoint_names(fleet: Fleet) -> set[str]:
    return {e["endpoint"] for e in httpx.get(fleet.url + "/endpoints", timeout=30).json()}


@contextlib.contextmanager
def _fleet_kept(fleet: Fleet) -> Iterator[None]:
    """While Schemathesis runs, no request adds a ComfyUI to the shared fleet or removes one
    of it (see the module docstring): such a request is sent with an address that names
    none (refused 422, or 404), still a request by the document. Rewritten just before
    sending, as every request goes (generated, from examples, or from values that earlier
    answers gave, as `GET /endpoints` gives the fleet's names)."""
    fleet_names = _endpoint_names(fleet)

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        op = case.operation.definition.raw.get("operationId")
        if op == "addEndpoint" and _accepted(schemas.AddEndpoint, case.body):
            case.body = {**case.body, "endpoint": NO_ENDPOINT}
        elif op == "removeEndpoint":
            name = urllib.parse.unquote(str(case.path_parameters.get("endpoint", "")))
            if name in fleet_names or name == NO_ENDPOINT:
                case.path_parameters["endpoint"] = "absent.invalid:1"

    schemathesis.hook(before_call)
    try:
        yield
    finally:
        schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(before_call)
    assert _endpoint_names(fleet) == fleet_names


def _run(schema: Any) -> tuple[list[str], dict[str, int]]:
    """Run Schemathesis' engine (what `schemathesis run` runs): the failures, each with the
    curl command that reproduces it, and the requests sent per operation."""
    failures: list[str] = []
    sent: dict[str, int] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, st_events.ScenarioFinished):
            label = event.recorder.label
            sent[label] = sent.get(label, 0) + len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    info = check.failure_info
                    if info is not None:
                        failures.append(
                            f"{label}: {check.name}: {info.failure.title}: "
                            f"{info.failure.message}\n  {info.code_sample}"
                        )
        elif isinstance(event, st_events.NonFatalError):
            failures.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, st_events.FatalError):
            raise event.exception
    return failures, sent


async def test_every_answer_is_documented(fleet: Fleet) -> None:
    schema = await asyncio.to_thread(_schema, fleet)
    before = await _task_ids(fleet)
    try:
        with _fleet_kept(fleet):
            failures, sent = await asyncio.to_thread(_run, schema)
    finally:
        # Leave the shared fleet as it was: the generated tasks (some with large images, or
        # a high priority) would hold the stand-ins for the tests after this one.
        for task_id in await _task_ids(fleet, unended=True) - before:
            r = await fleet.http.post(f"/tasks/{task_id}/cancel")
            assert r.status_code == 202, r.text
    # Every operation of the document was exercised.
    operations = {
        f"{method.upper()} {path}"
        for path, ops in schema.raw_schema["paths"].items()
        for method in ops
    }
    assert operations <= set(sent), operations - set(sent)
    assert failures == [], "\n".join(sorted(set(failures)))


async def _task_ids(fleet: Fleet, *, unended: bool = False) -> set[str]:
    statuses = ("queued", "dispatched", "running") if unended else (None,)
    found: set[str] = set()
    for status in statuses:
        cursor = None
        while True:
            params = {"limit": 500, **({"status": status} if status else {}),
                      **({"cursor": cursor} if cursor else {})}
            page = (await fleet.http.get("/tasks", params=params)).json()
            found |= {t["task_id"] for t in page["tasks"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return found


async def test_openapi_json_is_served_at_the_root(fleet: Fleet) -> None:
    root = fleet.url.removesuffix(fleet.settings.route_prefix)
    async with httpx.AsyncClient(base_url=root, timeout=30) as http:
        r = await http.get("/openapi.json")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["paths"][fleet.settings.route_prefix + "/tasks"]["post"][
            "operationId"] == "createTask"
        assert (await http.get(fleet.settings.route_prefix + "/openapi.json")).status_code == 404


async def test_stream_answers_server_sent_events(fleet: Fleet) -> None:
    r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": 8,
                                                                           "height": 8}})
    assert r.status_code == 202, r.text
    task = await fleet.wait_final(r.json()["task_id"])
    async with fleet.http.stream("GET", f"/tasks/{task['task_id']}/stream") as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        body = (await s.aread()).decode()
    frames = [f for f in body.split("\n\n") if f]
    first = dict(line.split(": ", 1) for line in frames[0].splitlines())
    assert first["id"] == "1" and first["event"] == "task.submitted"
    last = dict(line.split(": ", 1) for line in frames[-1].splitlines())
    assert last["event"] == f"task.{task['status']}"
