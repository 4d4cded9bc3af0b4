"""The console with API keys set: the page and its files need no key; the page asks for one when
the API answers 401, keeps it in localStorage and sends it as a bearer token.

The app is `serve_app.api.create_app` with API_KEYS, served by uvicorn on a free loopback port
over a real PostgreSQL event log and the shipped workflows, with an in-memory blob store and a
stand-in router client (no Ray: what is under test is the page and the door). With TENANT_KEYS
(CONTRACT §7.1) a tenant's console shows only its tenant's tasks and hides the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.responses import JSONResponse

from comfy_fleet.config import REPO_ROOT, Settings, parse_endpoint
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app.api import create_app
from serve_app.services import Services

pytestmark = pytest.mark.postgres

API_KEY = "console-test-key-8d1f0a"
#: Two tenants, one key each (TENANT_KEYS=acme:<key>,beta:<key>).
TENANT_KEYS = (("acme", "acme-console-key-4c7e21"), ("beta", "beta-console-key-93ab05"))
COMFY = "127.0.0.1:8188"


class QuietRouter:
    """The router's port with one idle endpoint: enough for the pages that read the fleet."""

    async def submit(self, task_id: str, priority: int, created_at: float, workflow: str,
                     labels: list[str]) -> int:
        return 0

    async def cancel(self, task_id: str) -> str:
        return "unknown"

    async def stats(self) -> dict[str, Any]:
        return {"waiting": 0, "endpoints": {COMFY: {"connected": True}}}

    async def endpoint_statuses(self) -> list[dict[str, Any]]:
        return [{"endpoint": COMFY, "state": "connected", "queue_remaining": 0, "inflight": 0,
                 "labels": ["gpu"], "last_seen": None}]


class NoWebhooks:
    async def task_ended(self, task_id: str) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleet_forbidden(app: Any) -> Any:
    """The app as a tenant key sees it (CONTRACT §7.1): the fleet's routes answer 403."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/v1/endpoints"):
            body = {"error": {"code": "forbidden", "message": "this key may not read the fleet"}}
            await JSONResponse(body, status_code=403)(scope, receive, send)
            return
        await app(scope, receive, send)

    return wrapped


@pytest.fixture
async def keyed_service(pg_dsn: str) -> AsyncIterator[str]:
    async with serve(pg_dsn) as url:
        yield url


@contextlib.asynccontextmanager
async def serve(pg_dsn: str, wrap: Any = None,
                tenant_keys: tuple[tuple[str, str], ...] = ()) -> AsyncIterator[str]:
    port = free_port()
    settings = Settings(
        comfyui_endpoints=(parse_endpoint(COMFY),), use_standins=False, database_url=pg_dsn,
        service_port=port, api_keys=(API_KEY,), tenant_keys=tenant_keys,
    )

    async def build() -> Services:
        registry, _ = WorkflowRegistry.load(REPO_ROOT / "workflows")
        return Services(
            settings=settings, log=await PostgresEventLog.connect(pg_dsn, max_size=2),
            store=InMemoryBlobStore(), registry=registry, router=QuietRouter(),
            webhooks=NoWebhooks(), url_policy=UrlPolicy.from_settings(settings),
        )

    app = create_app(settings, build)
    server = uvicorn.Server(uvicorn.Config(
        wrap(app) if wrap else app, host="127.0.0.1", port=port, lifespan="on",
        log_level="warning", access_log=False, timeout_graceful_shutdown=1,
    ))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def test_the_page_and_its_files_need_no_key(keyed_service: str) -> None:
    async with httpx.AsyncClient(base_url=keyed_service) as http:
        root = await http.get("/")
        assert root.status_code in (302, 307) and root.headers["location"].endswith("/console/")
        files = ("/console/", "/console/js/app.js", "/console/style.css", "/console/config.json")
        for path in files:
            r = await http.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            if path != "/console/config.json":
                assert "script-src 'self'" in r.headers["content-security-policy"]
                assert r.headers["x-content-type-options"] == "nosniff"
        assert (await http.get("/console/config.json")).json() == {"api": "/api/v1"}
        # The API itself still needs the key.
        assert (await http.get("/api/v1/tasks")).status_code == 401
        # Nothing outside the console's folder is served through it.
        assert (await http.get("/console/%2e%2e/console.py")).status_code == 404


async def test_asks_for_a_key_keeps_it_and_sends_it(keyed_service: str, page: Any) -> None:
    sent: list[str | None] = []
    def record(request: Any) -> None:
        if "/api/v1/" in request.url:
            sent.append(request.headers.get("authorization"))

    page.on("request", record)

    await page.goto(keyed_service + "/")
    dialog = page.locator("#key-dialog")
    await dialog.wait_for(state="visible")
    assert await page.locator("#task-rows").count() == 1  # the page itself loaded without a key

    # A wrong key is refused and the dialog asks again, saying so.
    await page.fill("#key-input", "not-the-key")
    await page.click("#key-form button[type=submit]")
    await page.locator("#key-error", has_text="refused").wait_for(state="visible")

    await page.fill("#key-input", API_KEY)
    await page.click("#key-form button[type=submit]")
    await dialog.wait_for(state="hidden")
    await page.locator("#task-rows td.empty").wait_for()
    assert await page.evaluate("localStorage.getItem('comfy-fleet.key')") == API_KEY
    assert f"Bearer {API_KEY}" in sent

    # The fleet view works with an admin key, and a reload needs no new prompt.
    await page.goto(keyed_service + "/console/#/fleet")
    await page.locator(f"tr[data-endpoint='{COMFY}']").wait_for()
    assert not await dialog.is_visible()
    # No script error, nothing the page's CSP refused; the loads that failed were the 401s.
    assert not page.problems, page.problems
    assert page.failed_loads and all("401" in f for f in page.failed_loads), page.failed_loads


async def test_a_key_that_may_not_read_the_fleet_hides_it(pg_dsn: str, page: Any) -> None:
    async with serve(pg_dsn, wrap=fleet_forbidden) as url:
        await page.add_init_script(f"localStorage.setItem('comfy-fleet.key', '{API_KEY}')")
        await page.goto(url + "/console/#/fleet")
        # Sent to the task list instead of an error; no fleet tab, no fleet strip.
        await page.wait_for_function("() => location.hash === '#/tasks'")
        await page.locator("#task-rows td.empty").wait_for()
        assert not await page.locator("#nav-fleet").is_visible()
        assert not await page.locator(".strip").is_visible()
        assert not await page.locator(".banner.bad").count()
        assert not page.problems, page.problems


async def submit_as(http: httpx.AsyncClient, key: str, width: int) -> dict[str, Any]:
    """One task submitted through the API with `key`; the task it answers with."""
    r = await http.post("/api/v1/tasks", headers={"authorization": f"Bearer {key}"},
                        json={"workflow": "solid", "params": {"width": width, "height": 8}})
    assert r.status_code == 202, r.text
    return dict(r.json())


async def test_a_tenant_key_sees_no_other_tenants_task_and_no_fleet(pg_dsn: str, page: Any) -> None:
    """With TENANT_KEYS: a tenant's console lists only its tenant's tasks, another tenant's task
    shows as an unknown one, and the fleet view and strip are hidden (GET /endpoints answers 403)
    instead of showing an error."""
    (tenant_a, key_a), (tenant_b, key_b) = TENANT_KEYS
    async with serve(pg_dsn, tenant_keys=TENANT_KEYS) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            mine = [await submit_as(http, key_a, w) for w in (8, 16)]
            theirs = [await submit_as(http, key_b, w) for w in (24, 32)]
            assert {t["tenant"] for t in mine} == {tenant_a}
            assert {t["tenant"] for t in theirs} == {tenant_b}
            # The door the page relies on: the fleet is refused to a tenant key.
            fleet = await http.get("/api/v1/endpoints",
                                   headers={"authorization": f"Bearer {key_a}"})
            assert fleet.status_code == 403 and fleet.json()["error"]["code"] == "forbidden"

        await page.add_init_script(f"localStorage.setItem('comfy-fleet.key', '{key_a}')")
        await page.goto(url + "/console/#/tasks")
        for task in mine:
            await page.locator(f"#task-rows tr[data-task-id='{task['task_id']}']").wait_for()
        rows = page.locator("#task-rows tr[data-task-id]")
        shown = {await rows.nth(i).get_attribute("data-task-id") for i in range(await rows.count())}
        assert shown == {t["task_id"] for t in mine}
        listed = await page.locator("#task-rows").inner_text()
        for task in theirs:
            assert task["task_id"] not in listed and task["task_id"][:8] not in listed
        assert not await page.locator("#nav-fleet").is_visible()
        assert not await page.locator(".strip").is_visible()

        # The other tenant's task looks exactly like an id that does not exist.
        await page.goto(url + f"/console/#/tasks/{theirs[0]['task_id']}")
        await page.locator(".banner.bad", has_text="task_not_found").wait_for()
        assert theirs[0]["workflow"] not in await page.locator(".head").inner_text()
        assert not await page.locator("#cancel").count()
        assert not await page.locator("#timeline tr").count()

        # The fleet's own address sends the tenant back to its task list.
        await page.goto(url + "/console/#/fleet")
        await page.wait_for_function("() => location.hash === '#/tasks'")
        await page.locator(f"#task-rows tr[data-task-id='{mine[0]['task_id']}']").wait_for()
        assert not await page.locator("#nav-fleet").is_visible()
        assert not await page.locator(".banner.bad").count()
        assert not page.problems, page.problems
