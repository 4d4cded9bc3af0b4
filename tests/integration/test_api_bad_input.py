"""Bad input at the HTTP API: every rejection has the documented 4xx and the contract's error
shape, leaks no secret, and records nothing.

The app is `serve_app.api.create_app` served by uvicorn on a free loopback port (the real HTTP
path, chunked bodies included), over a real PostgreSQL event log, the shipped workflows, an
in-memory blob store and a fake router client; no Ray.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn

from comfy_fleet.config import REPO_ROOT, Settings, parse_endpoint
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app.api import create_app
from serve_app.services import Services

pytestmark = pytest.mark.postgres

PREFIX = "/api/v1"
WEBHOOK_SECRET = "whsec_c2VjcmV0LWtleS1mb3ItYmFkLWlucHV0LXRlc3Rz"
API_KEY = "k-Zx81-very-secret-api-key"
MAX_BODY = 64 * 1024
#: a ComfyUI endpoint of the configuration: never a valid callback target
COMFY = "127.0.0.1:8188"
SECRETS = (WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), API_KEY, "hunter2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeRouterClient:
    async def cancel(self, task_id: str) -> str:
        return "unknown"

    async def stats(self) -> dict[str, Any]:
        return {"waiting": 0, "dispatched_total": 0, "endpoints": {COMFY: {"connected": True}}}

    async def endpoint_statuses(self) -> list[dict[str, Any]]:
        return []

    async def reload_workflows(self) -> dict[str, Any]:
        return {}

    async def add_endpoint(self, endpoint: str, labels: list[str]) -> dict[str, Any]:
        return {"endpoint": endpoint}

    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]:
        return {"endpoint": endpoint}


class FakeWebhooks:
    async def task_ended(self, task_id: str) -> None:
        return None

    async def fleet_add(self, endpoint: str) -> None:
        return None


@dataclass
class Api:
    http: httpx.AsyncClient
    dsn: str
    router: FakeRouterClient
    #: the Services the app built (one), for what the replica counted
    built: list[Services]

    def waiting_estimate(self) -> int:
        return self.built[0].waiting_estimate

    async def event_count(self) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM task_events"))
        finally:
            await conn.close()


def settings_for(dsn: str, port: int, api_keys: tuple[str, ...] = ()) -> Settings:
    return Settings(
        comfyui_endpoints=(parse_endpoint(COMFY),),
        use_standins=False,
        database_url=dsn,
        service_port=port,
        webhook_secret=WEBHOOK_SECRET,
        api_keys=api_keys,
        max_body_bytes=MAX_BODY,
    )


async def _serve(dsn: str, api_keys: tuple[str, ...] = ()) -> AsyncIterator[Api]:
    port = free_port()
    settings = settings_for(dsn, port, api_keys)
    router = FakeRouterClient()
    built: list[Services] = []

    async def build() -> Services:
        registry, problems = WorkflowRegistry.load(REPO_ROOT / "workflows")
        assert problems == []
        built.append(Services(
            settings=settings,
            log=await PostgresEventLog.connect(dsn, max_size=2),
            store=InMemoryBlobStore(),
            registry=registry,
            router=router,
            webhooks=FakeWebhooks(),
            url_policy=UrlPolicy.from_settings(settings),
        ))
        return built[-1]

    app = create_app(settings, build)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                       access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Api(http, dsn, router, built)
    finally:
        server.should_exit = True
        await serving


async def _database(admin_dsn: str, template: str, tag: str) -> str:
    from comfy_fleet_devstack.postgres import with_database

    name = f"cf_test_{os.getpid()}_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def _drop(admin_dsn: str, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def api(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[Api]:
    """One open service (no API keys) for the module's rejection cases: nothing may land in
    its database, ever, so the cases can share it."""
    dsn = await _database(pg_admin_dsn, pg_template, "badin")
    try:
        async for served in _serve(dsn):
            yield served
    finally:
        await _drop(pg_admin_dsn, dsn)


@pytest.fixture(scope="module")
async def locked_api(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[Api]:
    dsn = await _database(pg_admin_dsn, pg_template, "keys")
    try:
        async for served in _serve(dsn, api_keys=("other-key-1", API_KEY)):
            yield served
    finally:
        await _drop(pg_admin_dsn, dsn)


def assert_error_shape(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "details"} and {"code", "message"} <= set(err), err
    assert isinstance(err["code"], str) and err["code"] == err["code"].lower()
    assert " " not in err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    for secret in SECRETS:
        assert secret not in resp.text
    return err


def solid(**fields: Any) -> dict[str, Any]:
    return {"workflow": "solid", "params": {"width": 8, "height": 8}, **fields}


JSON_HEADERS = {"content-type": "application/json"}

#: (id, request kwargs for POST /tasks, status, code)
SUBMIT_CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("malformed_json", {"content": b'{"workflow": "solid", ', "headers": JSON_HEADERS}, 400,
     "malformed_json"),
    ("not_json_at_all", {"content": b"workflow=solid", "headers": JSON_HEADERS}, 400,
     "malformed_json"),
    ("body_is_a_list", {"json": [solid()]}, 422, "invalid_request"),
    ("empty_body", {"content": b"", "headers": JSON_HEADERS}, 422, "invalid_request"),
    ("workflow_not_a_string", {"json": {"workflow": 5}}, 422, "invalid_request"),
    ("workflow_missing", {"json": {"params": {}}}, 422, "invalid_request"),
    ("params_not_an_object", {"json": {"workflow": "solid", "params": "big"}}, 422, "invalid_request"),
    ("priority_not_an_int", {"json": solid(priority="high")}, 422, "invalid_request"),
    ("priority_out_of_range", {"json": solid(priority=10**12)}, 422, "invalid_request"),
    ("unknown_top_level_field", {"json": solid(colour="red")}, 422, "invalid_request"),
    ("unknown_workflow", {"json": {"workflow": "no-such-workflow"}}, 422, "unknown_workflow"),
    ("unknown_param", {"json": {"workflow": "solid", "params": {"wdth": 8}}}, 422, "params_invalid"),
    ("missing_required_param", {"json": {"workflow": "text2img", "params": {}}}, 422,
     "params_invalid"),
    ("mistyped_param", {"json": {"workflow": "solid", "params": {"width": "wide"}}}, 422,
     "params_invalid"),
    ("float_for_int_param", {"json": {"workflow": "solid", "params": {"width": 1.5}}}, 422,
     "params_invalid"),
    ("bool_for_int_param", {"json": {"workflow": "solid", "params": {"width": True}}}, 422,
     "params_invalid"),
    ("param_below_min", {"json": {"workflow": "solid", "params": {"width": 0}}}, 422,
     "params_invalid"),
    ("param_above_max", {"json": {"workflow": "solid", "params": {"width": 99999}}}, 422,
     "params_invalid"),
    ("string_over_its_limit", {"json": {"workflow": "text2img", "params": {"text": "x" * 2001}}},
     422, "params_invalid"),
    ("string_for_wrong_type", {"json": {"workflow": "text2img", "params": {"text": 5}}}, 422,
     "params_invalid"),
    ("client_task_id_over_128", {"json": solid(client_task_id="c" * 129)}, 422, "invalid_request"),
    ("client_task_id_empty", {"json": solid(client_task_id="")}, 422, "invalid_request"),
    ("client_task_id_not_a_string", {"json": solid(client_task_id=7)}, 422, "invalid_request"),
    ("callback_ftp", {"json": solid(callback_url="ftp://example.com/hook")}, 422, "url_forbidden"),
    ("callback_metadata", {"json": solid(callback_url="http://169.254.169.254/latest/meta-data")},
     422, "url_forbidden"),
    ("callback_mapped_metadata", {"json": solid(callback_url="http://[::ffff:169.254.169.254]/")},
     422, "url_forbidden"),
    ("callback_userinfo", {"json": solid(callback_url="http://alice:hunter2@example.com/hook")},
     422, "url_forbidden"),
    ("callback_comfyui_endpoint", {"json": solid(callback_url=f"http://{COMFY}/prompt")}, 422,
     "url_forbidden"),
    ("callback_comfyui_endpoint_by_name",
     {"json": solid(callback_url=f"http://localhost:{COMFY.rsplit(':', 1)[1]}/prompt")}, 422,
     "url_forbidden"),
    ("callback_unspecified_address", {"json": solid(callback_url="http://0.0.0.0:9000/")}, 422,
     "url_forbidden"),
    ("callback_decimal_ip", {"json": solid(callback_url="http://2852039166/")}, 422, None),
    ("callback_not_a_url", {"json": solid(callback_url="not a url")}, 422, "invalid_request"),
    ("callback_too_long", {"json": solid(callback_url="http://example.com/" + "a" * 2100)}, 422,
     "invalid_request"),
    ("negative_wait", {"json": solid(), "params": {"wait": -1}}, 422, "invalid_request"),
    ("huge_content_length", {"json": {"workflow": "text2img", "params": {"text": "x" * (MAX_BODY + 1)}}},
     413, "payload_too_large"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [pytest.param(k, s, c, id=i) for i, k, s, c in SUBMIT_CASES],
)
async def test_a_bad_submission_is_refused_and_nothing_is_recorded(
    api: Api, kwargs: dict[str, Any], status: int, code: str | None
) -> None:
    resp = await api.http.post(f"{PREFIX}/tasks", **kwargs)
    assert_error_shape(resp, status, code)
    assert await api.event_count() == 0


async def test_a_callback_to_the_service_itself_is_refused(api: Api) -> None:
    own = str(api.http.base_url).rstrip("/")
    resp = await api.http.post(f"{PREFIX}/tasks", json=solid(callback_url=f"{own}/hook"))
    assert_error_shape(resp, 422, "url_forbidden")
    assert await api.event_count() == 0


async def test_a_huge_chunked_body_without_content_length_is_refused(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"workflow": "text2img", "params": {"text": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"x" * 4096
        yield b'"}}'

    resp = await api.http.post(f"{PREFIX}/tasks", content=chunks(), headers=JSON_HEADERS)
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_error_shape(resp, 413, "payload_too_large")
    assert await api.event_count() == 0


async def test_a_body_under_the_limit_but_bad_is_judged_on_its_content(api: Api) -> None:
    # The limit counts bytes, not characters of the parameters: a body just under it is read.
    text = "x" * (MAX_BODY - 200)
    resp = await api.http.post(f"{PREFIX}/tasks", json={"workflow": "text2img", "params": {"text": text}})
    assert_error_shape(resp, 422, "params_invalid")
    assert await api.event_count() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tasks/not-a-uuid"),
        ("GET", "/tasks/../../etc/passwd"),
        ("GET", f"/tasks/{uuid.UUID(int=1)}"),
        ("GET", f"/tasks/{uuid.UUID(int=2)}/events"),
        ("GET", "/tasks/%00/events"),
        ("GET", f"/tasks/{uuid.UUID(int=3)}/stream"),
        ("POST", "/tasks/not-a-uuid/cancel"),
        ("POST", f"/tasks/{uuid.UUID(int=4)}/cancel"),
        ("POST", f"/tasks/{uuid.UUID(int=5)}/webhook"),
        ("GET", "/workflows/no-such-workflow"),
        ("GET", "/no-such-route"),
    ],
)
async def test_unknown_things_are_404_json(api: Api, method: str, path: str) -> None:
    resp = await api.http.request(method, PREFIX + path)
    assert_error_shape(resp, 404, None)
    assert await api.event_count() == 0


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=100000", "limit=ten", "status=bogus", "client_task_id=" + "c" * 129],
)
async def test_bad_list_queries_are_422(api: Api, query: str) -> None:
    resp = await api.http.get(f"{PREFIX}/tasks?{query}")
    assert_error_shape(resp, 422, "invalid_request")


async def test_bad_cursor_is_422(api: Api) -> None:
    resp = await api.http.get(f"{PREFIX}/tasks?cursor=%%%not-a-cursor")
    assert_error_shape(resp, 422, None)


async def test_wrong_method_is_405_json(api: Api) -> None:
    resp = await api.http.delete(f"{PREFIX}/tasks")
    assert_error_shape(resp, 405, "method_not_allowed")


async def test_bad_endpoint_registration_is_422(api: Api) -> None:
    for body in ({"endpoint": "no-port"}, {"endpoint": "127.0.0.1:70000"}, {"endpoint": "a:1", "x": 1}):
        resp = await api.http.post(f"{PREFIX}/endpoints", json=body)
        assert_error_shape(resp, 422, None)


# --- the door: API keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-key"},
        {"authorization": f"Bearer {API_KEY}x"},
        {"authorization": f"Bearer {API_KEY[:-1]}"},
        {"authorization": f"Basic {API_KEY}"},
        {"authorization": API_KEY},
        {"authorization": "Bearer"},
        {"x-api-key": API_KEY},
    ],
    ids=["missing", "wrong", "longer", "shorter", "basic", "no_scheme", "empty", "other_header"],
)
async def test_without_the_right_key_every_route_is_401(locked_api: Api, headers: dict[str, str]) -> None:
    for method, path, body in (
        ("GET", "/workflows", None),
        ("GET", "/tasks", None),
        ("POST", "/tasks", solid()),
        ("GET", f"/tasks/{uuid.UUID(int=1)}", None),
        ("GET", "/docs-not-here", None),
    ):
        resp = await locked_api.http.request(method, PREFIX + path, json=body, headers=headers)
        err = assert_error_shape(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].lower().startswith("bearer")
        assert "Authorization: Bearer" in err["message"]
    assert await locked_api.event_count() == 0


async def test_the_right_key_opens_and_health_needs_none(locked_api: Api) -> None:
    for key in (API_KEY, "other-key-1"):
        resp = await locked_api.http.get(f"{PREFIX}/workflows", headers={"authorization": f"Bearer {key}"})
        assert resp.status_code == 200
        assert "solid" in {w["name"] for w in resp.json()}
    resp = await locked_api.http.get(
        f"{PREFIX}/workflows", headers={"authorization": f"bearer {API_KEY}"}
    )
    assert resp.status_code == 200  # the scheme is case-insensitive (RFC 7235)
    assert (await locked_api.http.get(f"{PREFIX}/healthz")).status_code == 200
    ready = await locked_api.http.get(f"{PREFIX}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    for secret in SECRETS:
        assert secret not in ready.text
    auth = {"authorization": f"Bearer {API_KEY}"}
    for path in ("/openapi.json", f"{PREFIX}/workflows", f"{PREFIX}/endpoints"):
        resp = await locked_api.http.get(path, headers=auth)
        assert resp.status_code == 200
        for secret in SECRETS:
            assert secret not in resp.text
    # With the key, a bad request is judged on its content.
    resp = await locked_api.http.post(
        f"{PREFIX}/tasks", json={"workflow": "nope"}, headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert_error_shape(resp, 422, "unknown_workflow")
    assert await locked_api.event_count() == 0


# --- idempotency ------------------------------------------------------------------------------


async def test_same_client_task_id_same_body_is_200_and_different_body_409(pg_dsn: str) -> None:
    async for api_ in _serve(pg_dsn):
        body = solid(client_task_id="order-42", callback_url="http://127.0.0.1:9/hook")
        first = await api_.http.post(f"{PREFIX}/tasks", json=body)
        assert first.status_code == 202, first.text
        task = first.json()
        assert task["client_task_id"] == "order-42" and task["status"] == "queued"

        again = await api_.http.post(f"{PREFIX}/tasks", json=body)
        assert again.status_code == 200
        assert again.json()["task_id"] == task["task_id"]

        # Key order does not make a different body.
        reordered = orjson.dumps(dict(reversed(list(body.items()))))
        again = await api_.http.post(f"{PREFIX}/tasks", content=reordered, headers=JSON_HEADERS)
        assert again.status_code == 200 and again.json()["task_id"] == task["task_id"]

        for changed in (
            solid(client_task_id="order-42", callback_url="http://127.0.0.1:9/other"),
            {**body, "params": {"width": 9, "height": 8}},
            {**body, "priority": 3},
            {**body, "workflow": "text2img", "params": {"text": "a cat"}},
        ):
            conflict = await api_.http.post(f"{PREFIX}/tasks", json=changed)
            err = assert_error_shape(conflict, 409, "client_task_id_conflict")
            assert err["details"]["task_id"] == task["task_id"]

        assert await api_.event_count() == 1  # the one task.submitted
        assert api_.waiting_estimate() == 1  # counted into the waiting tasks once
        events_ = (await api_.http.get(f"{PREFIX}/tasks/{task['task_id']}/events")).json()
        assert [e["type"] for e in events_] == ["task.submitted"]
        for secret in SECRETS:
            assert secret not in first.text and secret not in str(events_)
