"""A whole service of the fault suite's own, with every part it depends on within reach of a
fault: PostgreSQL behind a TcpProxy (pause = the database is gone) and a proxy that loses the
answer to a chosen statement (an ambiguous commit), its own SeaweedFS (stop /
start), three ComfyUI stand-in processes (restart, knobs), the first of them behind a proxy
that can turn its websockets into zombies, and a webhook receiver that can go down.

One Ray instance per pytest process: when the e2e suite's session fleet already runs Ray (both
suites in one session; e2e runs first), this fixture takes Ray over — it stops that fleet's
Serve app and named actors, starts its own, and at the end leaves `ray.shutdown()` to the e2e
fixture's finaliser. Run alone, it starts Ray and shuts it down itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from comfy_standin.testing import StandInProcess
from comfy_fleet.config import Settings
from comfy_fleet_devstack.seaweed import SeaweedS3
from comfy_fleet_devstack.tcp_proxy import TcpProxy
from comfy_fleet_devstack import launch
from serve_app import deploy
from tests.support.background_loop import BackgroundLoop
from tests.support.lost_reply_proxy import LostReplyProxy
from tests.support.ports import free_port
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.ws_mute_proxy import WsMuteProxy

# One request line per poll drowns a failure's report.
logging.getLogger("httpx").setLevel(logging.WARNING)

#: seconds every stand-in node takes: a tiny task is in flight for ~0.2-0.3 s
NODE_DELAY = 0.1
#: settings of the fault suite's service (the admission test restarts it with a small limit)
FAULT_ENV = {
    "WEBHOOK_MAX_DELAY_S": "1.0",
    # retries must outlast a 10 s receiver outage: ~40 tries at <= 1 s
    "WEBHOOK_MAX_ATTEMPTS": "40",
    "WEBHOOK_TIMEOUT_S": "3",
    "ENDPOINT_LOST_AFTER_S": "5",
    "TASK_MAX_ATTEMPTS": "3",
    "ENDPOINT_QUEUE_DEPTH": "2",
}
DEFAULT_KNOBS: dict[str, Any] = {
    "node_delay": NODE_DELAY, "node_delays": {}, "fail": [], "hang": False, "view_delay": 0.0,
    "lose_next_prompts": 0, "stall_worker": False, "refuse_websockets": False,
}


def _fleet_actor_names() -> list[str]:
    import ray

    from actors.remote import NAMESPACE

    return [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE
    ]


def stop_service_keep_ray() -> None:
    """Kill Serve and every named actor of the fleet (as a crash would), keep Ray running."""
    import ray
    from ray import serve

    from actors.remote import NAMESPACE

    for name in _fleet_actor_names():
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    with contextlib.suppress(Exception):
        serve.shutdown()
    deadline = time.monotonic() + 30
    # A killed actor's name is freed asynchronously; a new deploy must not find the dead one.
    while _fleet_actor_names() and time.monotonic() < deadline:
        time.sleep(0.1)


@dataclass
class FaultFleet:
    """The running service and handles on everything a fault test breaks."""

    url: str
    settings: Settings
    bg: BackgroundLoop
    pg_proxy: TcpProxy
    #: in front of `pg_proxy`: loses the answer to one chosen statement (an ambiguous commit)
    pg_lost_reply: LostReplyProxy
    seaweed: SeaweedS3
    standins: list[StandInProcess]
    #: the endpoint name the service uses for each stand-in (index-aligned with `standins`)
    endpoints: list[str]
    mute_proxy: WsMuteProxy
    data_dir: Path
    #: the settings the suite starts with (a test that changes them gets them back after it)
    base_settings: Settings
    http: httpx.AsyncClient = field(init=False)
    receiver: WebhookReceiver = field(init=False)

    def standin(self, endpoint: str) -> StandInProcess:
        return self.standins[self.endpoints.index(endpoint)]

    async def knobs(self, index: int, **knobs: Any) -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.post(f"{self.standins[index].url}/_standin/knobs", json=knobs)
            assert r.status_code == 200, r.text

    async def counters(self, index: int) -> dict[str, int]:
        async with httpx.AsyncClient(timeout=10) as c:
            return dict((await c.get(f"{self.standins[index].url}/_standin/counters")).json())

    async def submit(
        self, n: int, *, callback: bool = True, priority: int = 0, **params: Any
    ) -> list[str]:
        """POST n small solid tasks; every one must be acknowledged 202. Returns their ids."""
        ids = []
        for i in range(n):
            body: dict[str, Any] = {
                "workflow": "solid",
                "params": {
                    "width": 8 + i % 8, "height": 8, "color": (i * 7919) % 0xFFFFFF, **params
                },
                "priority": priority,
            }
            if callback:
                body["callback_url"] = self.receiver.url
            r = await self.http.post("/tasks", json=body)
            assert r.status_code == 202, f"task {i + 1} of {n} (priority {priority}): {r.text}"
            ids.append(r.json()["task_id"])
        return ids

    async def endpoint_states(self) -> dict[str, dict[str, Any]]:
        r = await self.http.get("/endpoints")
        return {e["endpoint"]: e for e in r.json()} if r.status_code == 200 else {}

    async def wait_dispatch_streams(self, timeout: float = 30.0) -> None:
        """Until every endpoint holds its dispatch stream open to the router (the router's
        own stats: the API does not show them)."""
        import ray

        from actors.remote import NAMESPACE, ROUTER_NAME
        from tests.support.polling import eventually

        router = ray.get_actor(ROUTER_NAME, namespace=NAMESPACE)

        async def all_open() -> bool:
            stats = await router.stats.remote()
            return all(stats["endpoints"][e]["dispatch_stream"] for e in self.endpoints)

        await eventually(all_open, timeout=timeout, what="every endpoint's dispatch stream open")

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """/readyz 200 and every endpoint connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                ready = (await self.http.get("/readyz")).status_code == 200
                states = await self.endpoint_states()
                if ready and len(states) == len(self.endpoints) and all(
                    s["state"] == "connected" for s in states.values()
                ):
                    return
            if loop.time() > deadline:
                raise AssertionError(f"service not ready: {await self.endpoint_states()}")
            await asyncio.sleep(0.2)

    async def restart_service(self, settings: Settings | None = None) -> None:
        """Kill the whole service (Serve and every actor) and start it again on the same
        database, S3 and stand-ins; `settings` replaces the service's settings."""
        if settings is not None:
            self.settings = settings
        await asyncio.to_thread(stop_service_keep_ray)
        self.url = await asyncio.to_thread(deploy.start_service, self.settings)


@pytest.fixture(scope="session")
def fault_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_dsn: str
) -> Iterator[FaultFleet]:
    import ray

    from comfy_fleet_devstack.postgres import create_database, drop_database, unique_database_name

    admin = urlsplit(pg_admin_dsn)
    if not admin.hostname or admin.hostname.startswith("/"):
        pytest.skip("the fault suite puts a TCP proxy before PostgreSQL: it needs a TCP server")
    data = tmp_path_factory.mktemp("faults")
    bg = BackgroundLoop("faults-proxies")
    db_name = unique_database_name("faults")
    dsn = asyncio.run(create_database(pg_admin_dsn, db_name))
    pg_proxy = bg.run(TcpProxy(admin.hostname, admin.port or 5432).start())
    lost_reply = bg.run(LostReplyProxy("127.0.0.1", pg_proxy.port).start())
    real = urlsplit(dsn)
    netloc = real.netloc.rsplit("@", 1)
    proxied_host = f"127.0.0.1:{lost_reply.port}"
    proxied_netloc = f"{netloc[0]}@{proxied_host}" if len(netloc) == 2 else proxied_host
    proxied_dsn = urlunsplit((real.scheme, proxied_netloc, real.path, real.query, real.fragment))

    seaweed = SeaweedS3(data / "s3").start()
    standins: list[StandInProcess] = []
    owned_ray = not ray.is_initialized()
    mute: WsMuteProxy | None = None
    try:
        for i in range(3):
            root = data / f"standin-{i}"
            for d in ("input", "output", "temp"):
                (root / d).mkdir(parents=True, exist_ok=True)
            standins.append(
                StandInProcess(
                    input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp",
                    node_delay=NODE_DELAY,
                ).start()
            )
        mute = bg.run(WsMuteProxy("127.0.0.1", standins[0].port).start())
        endpoints = [mute.host_port] + [s.host_port for s in standins[1:]]
        settings = Settings.from_env(
            {
                "DATABASE_URL": proxied_dsn,
                "SERVICE_PORT": str(free_port()),
                "COMFYUI_ENDPOINTS": ",".join(endpoints),
                "S3_ENDPOINT_URL": seaweed.endpoint_url,
                "S3_BUCKET": seaweed.bucket,
                "S3_REGION_NAME": seaweed.region,
                "AWS_ACCESS_KEY_ID": seaweed.access_key,
                "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
                "DEFAULT_FAILED_IMAGE_PATH": str(data / "failed"),
                **FAULT_ENV,
            },
            dotenv=data / "none",
        )
        deploy.migrate_database(settings)
        deploy.ensure_bucket(settings)
        if owned_ray:
            launch.init_ray(settings, num_cpus=2)
        else:
            stop_service_keep_ray()  # the e2e fleet's: one service per Ray
        url = deploy.start_service(settings)
        yield FaultFleet(
            url, settings, bg, pg_proxy, lost_reply, seaweed, standins, endpoints, mute, data,
            settings,
        )
    finally:
        stop_service_keep_ray()
        if owned_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
        for s in standins:
            with contextlib.suppress(Exception):
                s.stop()
        seaweed.stop()
        with contextlib.suppress(Exception):
            if mute is not None:
                bg.run(mute.close())
            bg.run(lost_reply.close())
            bg.run(pg_proxy.close())
        bg.close()
        asyncio.run(drop_database(pg_admin_dsn, db_name))


@pytest.fixture(scope="session")
async def fault_fleet(fault_stack: FaultFleet) -> AsyncIterator[FaultFleet]:
    receiver = await WebhookReceiver().start()
    fault_stack.receiver = receiver
    async with httpx.AsyncClient(base_url=fault_stack.url, timeout=30) as http:
        fault_stack.http = http
        try:
            yield fault_stack
        finally:
            await receiver.close()


@pytest.fixture
async def fleet(fault_fleet: FaultFleet) -> AsyncIterator[FaultFleet]:
    """The fleet healed of the last test's faults: everything up, default knobs, ready."""
    f = fault_fleet
    f.pg_lost_reply.arm(b"", 0)
    if f.pg_proxy.paused:
        await f.bg.arun(f.pg_proxy.resume())
    if not f.seaweed.running:
        await asyncio.to_thread(f.seaweed.start)
    for s in f.standins:
        if s.proc is None or s.proc.poll() is not None:
            await asyncio.to_thread(s.start)
    for i in range(len(f.standins)):
        await f.knobs(i, **DEFAULT_KNOBS)
    await f.receiver.up()
    f.receiver.status = 200
    if f.settings is not f.base_settings:
        await f.restart_service(f.base_settings)
    await f.wait_ready()
    yield f
