"""The OpenAPI document, built from the app without Ray or any service: every 2xx answer has a
schema, the error statuses have the error shape, operationIds are lowerCamelCase and unique,
and the bearer scheme covers every route but the health checks.

With API_KEYS set, every route behind the key answers 401 in its documented shape (the app in
process over httpx's ASGI transport: the key is checked before any service is needed)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
import pytest

from comfy_fleet.config import Settings
from serve_app.api import create_app

PREFIX = "/api/v1"
KEY = "k-openapi-test-key"
LOWER_CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
#: The operations the contract names (CONTRACT §7.7, docs/api.md): clients are generated with them.
NAMED = {
    ("post", "/tasks"): "createTask",
    ("get", "/tasks"): "listTasks",
    ("get", "/tasks/{task_id}"): "getTask",
    ("get", "/tasks/{task_id}/events"): "getTaskEvents",
    ("get", "/tasks/{task_id}/stream"): "streamTask",
    ("post", "/tasks/{task_id}/cancel"): "cancelTask",
    ("post", "/tasks/{task_id}/webhook"): "redeliverWebhook",
    ("post", "/batches"): "createBatch",
    ("get", "/batches/{batch_id}"): "getBatch",
    ("post", "/batches/{batch_id}/cancel"): "cancelBatch",
    ("post", "/tasks/{task_id}/rerun"): "rerunTask",
    ("get", "/workflows"): "listWorkflows",
    ("get", "/workflows/{name}"): "getWorkflow",
    ("post", "/workflows/reload"): "reloadWorkflows",
    ("get", "/workflows/{name}/versions"): "listWorkflowVersions",
    ("get", "/workflows/{name}/versions/{version}"): "getWorkflowVersion",
    ("get", "/endpoints"): "listEndpoints",
    ("post", "/endpoints"): "addEndpoint",
    ("delete", "/endpoints/{endpoint}"): "removeEndpoint",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("post", ""): "legacySubmit",
}
OPEN = {"healthz", "readyz"}


async def _no_services() -> Any:
    raise AssertionError("the document needs no services")


def _document(api_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    return create_app(Settings(api_keys=api_keys), _no_services).openapi()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `doc`."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return _document()


def test_every_route_is_documented_with_its_contract_operation_id(doc: dict[str, Any]) -> None:
    found = {(m, p.removeprefix(PREFIX)): op["operationId"] for m, p, op in _operations(doc)}
    assert found == NAMED


def test_operation_ids_are_lower_camel_case_and_unique(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for _m, _p, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    assert [i for i in ids if not LOWER_CAMEL.match(i)] == []


def test_every_2xx_answer_has_a_non_empty_schema(doc: dict[str, Any]) -> None:
    empty = []
    for method, path, op in _operations(doc):
        for status, answer in op["responses"].items():
            if not status.startswith("2"):
                continue
            content = answer.get("content") or {}
            schemas = [_resolve(doc, c.get("schema") or {}) for c in content.values()]
            # A schema says something of the answer's shape: an object's properties or a
            # list's items, not just `{}` or a bare type.
            if not schemas or not all("properties" in s or "items" in s for s in schemas):
                empty.append(f"{method} {path} {status}")
    assert empty == []


def test_error_statuses_answer_the_error_shape(doc: dict[str, Any]) -> None:
    shape = doc["components"]["schemas"]["Error"]
    assert shape["required"] == ["error"]
    body = _resolve(doc, shape["properties"]["error"])
    assert set(body["properties"]) == {"code", "message", "details"}
    assert set(body["required"]) == {"code", "message"}
    wrong = []
    for method, path, op in _operations(doc):
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")) and op["operationId"] != "readyz":
                schema = answer["content"]["application/json"]["schema"]
                if schema != {"$ref": "#/components/schemas/Error"}:
                    wrong.append(f"{method} {path} {status}: {schema}")
    assert wrong == []
    # FastAPI's own `{"detail": …}` 422 is gone.
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_each_route_documents_the_errors_it_can_answer(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        statuses = set(op["responses"])
        if op["operationId"] in OPEN:
            assert "401" not in statuses
            continue
        assert "401" in statuses, op["operationId"]
        if "{" in path:
            assert "404" in statuses, op["operationId"]
        if "requestBody" in op:
            assert {"400", "413", "422"} <= statuses, op["operationId"]
        for retry in {"429", "503"} & statuses:
            assert "Retry-After" in op["responses"][retry]["headers"], op["operationId"]
    create = doc["paths"][PREFIX + "/tasks"]["post"]["responses"]
    assert {"200", "202", "409", "429"} <= set(create)


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_bearer_scheme_covers_every_route_but_health(keys: tuple[str, ...]) -> None:
    """With keys the bearer key is required; without (loopback) it is optional, as it is."""
    doc = _document(keys)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    required = [{"bearer": []}] if keys else [{"bearer": []}, {}]
    for _m, _p, op in _operations(doc):
        expected = None if op["operationId"] in OPEN else required
        assert op.get("security") == expected, op["operationId"]


def test_stream_is_documented_as_server_sent_events(doc: dict[str, Any]) -> None:
    op = doc["paths"][PREFIX + "/tasks/{task_id}/stream"]["get"]
    assert list(op["responses"]["200"]["content"]) == ["text/event-stream"]
    for event in ("task.submitted", "task.progressed", "task.succeeded", "task.failed"):
        assert event in op["description"]
    assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in op["parameters"])


def test_examples_conform_to_their_schemas(doc: dict[str, Any]) -> None:
    checked = 0
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            _validator(doc, schema).validate(example)
            checked += 1
    for _m, _p, op in _operations(doc):
        for answer in op["responses"].values():
            media = (answer.get("content") or {}).get("application/json", {})
            if "example" in media:
                _validator(doc, media["schema"]).validate(media["example"])
                checked += 1
    assert checked >= 10


def _request_for(method: str, path: str, op: dict[str, Any]) -> tuple[str, str, Any]:
    url = re.sub(r"\{[^}]+\}", "x", path)
    body = {} if "requestBody" in op else None
    return method.upper(), url, body


async def test_with_keys_every_api_route_answers_401_in_its_documented_shape() -> None:
    app = create_app(Settings(api_keys=(KEY,)), _no_services)
    doc = app.openapi()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fleet"
    ) as http:
        for method, path, op in _operations(doc):
            if op["operationId"] in OPEN:
                continue
            verb, url, body = _request_for(method, path, op)
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
                r = await http.request(verb, url, json=body, headers=headers)
                assert r.status_code == 401, (op["operationId"], headers, r.text)
                assert r.headers["content-type"] == "application/json"
                assert r.headers["www-authenticate"].startswith("Bearer")
                schema = op["responses"]["401"]["content"]["application/json"]["schema"]
                _validator(doc, schema).validate(r.json())
                assert r.json()["error"]["code"] == "unauthorized"
        r = await http.get(PREFIX + "/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_405_names_every_method_of_the_path_in_allow() -> None:
    app = create_app(Settings(), _no_services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fleet"
    ) as http:
        for verb, url, allow in (
            ("PUT", PREFIX + "/tasks", "GET, POST"),
            ("DELETE", PREFIX + "/tasks/x", "GET"),
            ("GET", PREFIX + "/tasks/x/cancel", "POST"),
            ("PATCH", PREFIX, "POST"),
            ("GET", PREFIX + "/endpoints/x", "DELETE"),
            ("PUT", "/openapi.json", "GET, HEAD"),
            ("PUT", PREFIX + "/workflows/reload", "POST"),
            ("PUT", PREFIX + "/workflows/solid", "GET"),
        ):
            r = await http.request(verb, url)
            assert r.status_code == 405, (verb, url)
            assert set(r.headers["allow"].split(", ")) == set(allow.split(", ")), (verb, url)
            assert r.json()["error"]["code"] == "method_not_allowed"
