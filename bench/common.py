"""Shared set-up for the benchmarks: the whole service on this machine, a webhook receiver, and
a minimal direct ComfyUI client for comparison. Benchmarks print figures; they are not tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.db_cpu import process_cpu_s  # noqa: E402
from comfy_fleet.config import Settings  # noqa: E402
from comfy_fleet_devstack import launch  # noqa: E402
from serve_app import deploy  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    return f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB"


def rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def service(
    *, endpoints: int = 4, env: dict[str, str] | None = None, node_delay: float = 0.0,
    standins_in_one_process: bool = False,
) -> Iterator[tuple[str, Settings, launch.LocalParts]]:
    """The whole service, started as `make run` starts it, on a database of its own.
    `standins_in_one_process`: the stand-ins (standing for GPU hosts) share one process."""
    from comfy_fleet_devstack import postgres

    admin = postgres.find_test_server()
    name = postgres.unique_database_name("bench")
    dsn = asyncio.run(postgres.create_database(admin, name))
    data = Path(tempfile.mkdtemp(prefix="comfy-fleet-bench-"))
    settings = Settings.from_env(
        {"DATABASE_URL": dsn, "SERVICE_PORT": str(free_port()), **(env or {})}, dotenv=data / "none"
    )
    settings, parts = launch.start_local_parts(
        settings, data, standins=endpoints, standin_node_delay=node_delay,
        standins_in_one_process=standins_in_one_process, say=lambda _m: None,
    )
    try:
        deploy.migrate_database(settings)
        deploy.ensure_bucket(settings)
        launch.init_ray(settings, num_cpus=os.cpu_count() or 2)
        url = deploy.start_service(settings)
        wait_ready(url, endpoints)
        yield url, settings, parts
    finally:
        launch.stop_service(settings)
        parts.stop()
        asyncio.run(postgres.drop_database(admin, name))


def wait_ready(url: str, endpoints: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            eps = httpx.get(f"{url}/endpoints", timeout=5).json()
            if sum(1 for e in eps if e.get("state") == "connected") >= endpoints:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError("service not ready")


async def serve_hook(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], port: int
) -> web.AppRunner:
    """A webhook receiver on 127.0.0.1:`port` (`POST /hook` → `handle`): its runner, to clean up."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@dataclass
class Receiver:
    """Counts webhooks per task and remembers when each arrived."""

    port: int = field(default_factory=free_port)
    by_task: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            tid = body["task"]["task_id"]
            self.by_task[tid].append(time.monotonic())
            self.ids[tid].add(request.headers.get("webhook-id", ""))
            return web.Response(status=204)

        self.runner = await serve_hook(handle, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()

    def duplicates(self) -> int:
        """Deliveries beyond one per task that did NOT reuse the same webhook-id."""
        return sum(len(ids) - 1 for ids in self.ids.values() if len(ids) > 1)


def tiny_prompt(seed: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 16777215}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"direct/{uuid.uuid4().hex}"}},
    }


class DirectClient:
    """The minimal way to use one ComfyUI: post, wait for completion on the socket, read the
    history, fetch the outputs. What comfy-fleet is compared with."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client_id = uuid.uuid4().hex
        self.http = httpx.AsyncClient(base_url=base, timeout=30)
        self.done: dict[str, asyncio.Future[None]] = {}
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws = await websockets.connect(
            self.base.replace("http", "ws") + f"/ws?clientId={self.client_id}", max_size=None
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if isinstance(msg, str):
                frame = orjson.loads(msg)
                data = frame.get("data") or {}
                if frame.get("type") == "executing" and data.get("node") is None:
                    fut = self.done.get(data.get("prompt_id"))
                    if fut and not fut.done():
                        fut.set_result(None)

    async def run(self, prompt: dict[str, Any]) -> None:
        pid = str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self.done[pid] = fut
        r = await self.http.post("/prompt", json={"prompt": prompt, "prompt_id": pid, "client_id": self.client_id})
        r.raise_for_status()
        await fut
        hist = (await self.http.get(f"/history/{pid}")).json()[pid]
        for out in hist["outputs"].values():
            for img in out.get("images", []):
                await self.http.get("/view", params={"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
        del self.done[pid]

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        await self.ws.close()
        await self.http.aclose()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _process_label(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    if not cmd:
        return None
    if cmd.startswith("ray::"):
        # Ray's process titles: "ray::Router.method" / "ray::ServeReplica:app:Ingress" / "ray::IDLE".
        return cmd.split()[0].split(".")[0]
    for key, label in (("comfy_standin", "stand-ins"), ("postgres", "postgres"), ("weed", "seaweedfs"),
                       ("haproxy", "haproxy"), ("gcs_server", "ray: gcs"), ("raylet", "ray: raylet"),
                       ("dashboard", "ray: dashboard/agents"), ("log_monitor", "ray: log monitor"),
                       ("runtime_env", "ray: dashboard/agents"), ("bench.", "load generator")):
        if key in cmd:
            return label
    return None


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process on this machine, by its
    command line; compare two snapshots for what a phase cost. Linux /proc only."""
    totals: dict[str, float] = defaultdict(float)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        label = _process_label(pid)
        used = process_cpu_s(pid) if label is not None else None
        if label is not None and used is not None:
            totals[label] += used
    return dict(totals)


def cpu_report(before: dict[str, float], after: dict[str, float], tasks: int) -> str:
    """Lines of CPU milliseconds per task by process kind, largest first (processes that ended
    between the snapshots are not counted)."""
    used = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    used = {k: v for k, v in used.items() if v > 0.005}
    total = sum(used.values())
    lines = [f"CPU per task by process ({total:.1f} CPU-s for {tasks} tasks, {1000 * total / max(tasks, 1):.1f} ms/task):"]
    for k, v in sorted(used.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<40} {1000 * v / max(tasks, 1):7.2f} ms  {100 * v / total:5.1f} %")
    return "\n".join(lines)
