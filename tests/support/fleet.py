"""Fixtures `fleet`, `receiver`: the whole service, once per test session: real PostgreSQL, SeaweedFS, Ray + Serve, and two
ComfyUI stand-ins (the only stand-in), plus a webhook receiver of the test's own."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from comfy_fleet.config import Settings
from comfy_fleet_devstack import launch
from serve_app import deploy
from tests.support.ports import free_port

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Fleet:
    url: str
    settings: Settings
    parts: launch.LocalParts
    http: httpx.AsyncClient

    @property
    def standins(self) -> list[Any]:
        return self.parts.standins

    async def wait_final(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            task = (await self.http.get(f"/tasks/{task_id}")).json()
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return task
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"task {task_id} did not end: {task}")
            await asyncio.sleep(0.1)

    async def task_count(self) -> int:
        """How many tasks the service lists (up to 500): a refused request leaves it as it was."""
        r = await self.http.get("/tasks", params={"limit": 500})
        assert r.status_code == 200, r.text
        return len(r.json()["tasks"])


@pytest.fixture(scope="session")
def fleet_sync(tmp_path_factory: pytest.TempPathFactory, pg_admin_dsn: str) -> Iterator[tuple[str, Settings, launch.LocalParts]]:
    from comfy_fleet_devstack.postgres import create_database, drop_database, unique_database_name

    data = tmp_path_factory.mktemp("fleet")
    # A workflows folder of the session's own, so tests can add workflows and reload.
    workflows = data / "workflows"
    shutil.copytree(Path(__file__).resolve().parents[2] / "workflows", workflows)
    db_name = unique_database_name("e2e")
    dsn = asyncio.run(create_database(pg_admin_dsn, db_name))
    settings = Settings.from_env(
        {
            "DATABASE_URL": dsn,
            "SERVICE_PORT": str(free_port()),
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_MAX_DELAY_S": "0.5",
            "WEBHOOK_MAX_ATTEMPTS": "4",
            "DEFAULT_FAILED_IMAGE_PATH": str(data / "failed"),
            "WORKFLOWS_DIR": str(workflows),
            # Raw graphs on, limited to the nodes the stand-in really runs, so a test sees a
            # class refused (ImageToMask); NopeNode is listed so one sees a class no endpoint has.
            # The fold snapshot refreshed often, so a test sees the service keep it fresh.
            "FOLD_SNAPSHOT_S": "4",
            "RAW_GRAPHS": "true",
            "RAW_GRAPH_ALLOW_NODES": "EmptyImage,LoadImage,ImageInvert,ImageScale,ImageBlur,"
            "SaveImage,PreviewImage,NopeNode",
        },
        dotenv=data / "none",
    )
    settings, parts = launch.start_local_parts(settings, data, say=lambda _m: None)
    try:
        deploy.migrate_database(settings)
        deploy.ensure_bucket(settings)
        launch.init_ray(settings, num_cpus=2, metrics_report_interval_ms=1000)
        url = deploy.start_service(settings)
        yield url, settings, parts
    finally:
        launch.stop_service(settings)
        parts.stop()
        asyncio.run(drop_database(pg_admin_dsn, db_name))


@pytest.fixture(scope="session")
async def fleet(fleet_sync: tuple[str, Settings, launch.LocalParts]) -> AsyncIterator[Fleet]:
    url, settings, parts = fleet_sync
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        # Ready = the database answers and an endpoint is connected.
        for _ in range(300):
            r = await http.get("/readyz")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield Fleet(url, settings, parts, http)


@dataclass
class Receiver:
    """A webhook receiver: records every request; answers from a script of statuses."""

    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["json"]["task"]["task_id"] == task_id]

    async def wait_for(self, task_id: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len([c for c in self.for_task(task_id) if c["status"] < 300]) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"webhook for {task_id} not delivered: {self.for_task(task_id)}")
            await asyncio.sleep(0.05)
        return self.for_task(task_id)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        status = rec.script.pop(0) if rec.script else 200
        rec.calls.append(
            {"headers": dict(request.headers), "body": body, "json": json.loads(body), "status": status}
        )
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield rec
    finally:
        await runner.cleanup()
