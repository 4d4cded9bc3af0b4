"""`python bench/fairness.py --service`: fairness among tenants through the real service.

The service runs as `make run` runs it (`python -m comfy_fleet_devstack.run` in a process of its own, on a
database of its own on the local PostgreSQL) with tenant keys for A and B, in front of ComfyUI
stand-ins that take `--node-delay` seconds per node (the `solid` workflow has two nodes), so
work waits. Tenant A floods `--flood` tasks over HTTP; once `--burst-after` of them are recorded,
tenant B submits `--burst`. When B's tasks have all ended and A's flood is all submitted,
the service is stopped (`--cut-flood`: A's flood stops being submitted then too). The figures
come from the log (`task_events`): when each task was submitted, first dispatched and ended.

Printed, for equal weights and for A:B = 3:1 (one service start each):
- B's share of the dispatches made while both A and B had tasks waiting;
- B's share of the completions from B's first completion to its last, counting only tasks
  dispatched while both waited (what the share decides), and counting every completion (A's
  tasks already in ComfyUI's queues when B came end in that window too);
- B's median and 95th-percentile wait (submit → dispatch), beside its wait on an idle fleet
  (B's tasks alone, measured first on the equal-weights service).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from comfy_fleet_devstack import postgres
from tests.support.service_process import Service, free_port

KEYS = {"a": "bench-key-a", "b": "bench-key-b"}
BODY = {"workflow": "solid", "params": {"width": 8, "height": 8}}


@dataclass
class Task:
    tenant: str
    submitted: datetime
    dispatched: datetime | None = None
    ended: datetime | None = None


async def read_tasks(dsn: str, tenants: tuple[str, ...] = ("a", "b")) -> dict[str, Task]:
    """Each task's submit, first dispatch and end, from the log."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT e.task_id, t.tenant, e.type, e.recorded_at FROM task_events e"
            " JOIN tasks t USING (task_id) WHERE t.tenant = ANY($1::text[])"
            " AND e.type IN ('task.submitted', 'task.dispatched', 'task.succeeded',"
            " 'task.failed', 'task.cancelled') ORDER BY e.position",
            list(tenants),
        )
    finally:
        await conn.close()
    tasks: dict[str, Task] = {}
    for r in rows:
        tid, kind, at = str(r["task_id"]), r["type"], r["recorded_at"]
        if kind == "task.submitted":
            tasks[tid] = Task(r["tenant"], at)
        elif kind == "task.dispatched" and tid in tasks and tasks[tid].dispatched is None:
            tasks[tid].dispatched = at
        elif tid in tasks and tasks[tid].ended is None:
            tasks[tid].ended = at
    return tasks


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(tasks: dict[str, Task]) -> dict[str, Any]:
    """The figures of one flooded run (see the module docstring)."""
    b = [t for t in tasks.values() if t.tenant == "b"]
    # Moments where waiting counts change: submissions (+1) and first dispatches (-1).
    changes = sorted(
        [(t.submitted, 0, t.tenant, +1) for t in tasks.values()]
        + [(t.dispatched, 1, t.tenant, -1) for t in tasks.values() if t.dispatched is not None]
    )
    waiting = {"a": 0, "b": 0}
    a_waiting_at_b = 0
    contested: list[str] = []
    both_since: datetime | None = None
    both_until: datetime | None = None
    for at, kind, tenant, delta in changes:
        if kind == 1 and waiting["a"] > 0 and waiting["b"] > 0:
            contested.append(tenant)
            both_until = at
        if tenant == "b" and delta > 0 and waiting["b"] == 0 and not a_waiting_at_b:
            a_waiting_at_b = waiting["a"]
        waiting[tenant] += delta
        if both_since is None and waiting["a"] > 0 and waiting["b"] > 0:
            both_since = at
    ended_b = [t.ended for t in b if t.ended is not None]
    first, last = min(ended_b), max(ended_b)
    window = [t for t in tasks.values() if t.ended is not None and first <= t.ended <= last]
    decided = [
        t for t in window
        if t.dispatched is not None and both_since is not None and both_until is not None
        and both_since <= t.dispatched <= both_until
    ]
    waits = [(t.dispatched - t.submitted).total_seconds() for t in b if t.dispatched is not None]
    return {
        "dispatch_share": contested.count("b") / max(1, len(contested)),
        "contested": len(contested),
        "completion_share_decided": sum(t.tenant == "b" for t in decided) / max(1, len(decided)),
        "completion_share_all": sum(t.tenant == "b" for t in window) / max(1, len(window)),
        "b_median_wait": statistics.median(waits),
        "b_p95_wait": pct(waits, 0.95),
        "a_recorded": sum(t.tenant == "a" for t in tasks.values()),
        "a_waiting_at_b": a_waiting_at_b,
    }


async def post_tasks(
    client: httpx.AsyncClient, n: int, concurrency: int, counter: list[int] | None = None
) -> list[str]:
    """Submit `n` tasks with `concurrency` requests in flight; their ids. A 429 is retried
    after its Retry-After."""
    ids: list[str] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            while True:
                r = await client.post("/tasks", json=BODY)
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                r.raise_for_status()
                ids.append(r.json()["task_id"])
                if counter is not None:
                    counter[0] += 1
                break

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def wait_ended(client: httpx.AsyncClient, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = set(ids)
    while left:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(left)} of B's tasks did not end in {timeout} s")
        for tid in list(left)[:50]:
            task = (await client.get(f"/tasks/{tid}")).json()
            if task["status"] in ("succeeded", "failed", "cancelled"):
                left.discard(tid)
        await asyncio.sleep(0.5)


async def flooded(url: str, args: Any) -> None:
    """A floods; B submits its burst once `burst_after` of A's are recorded; returns when B's
    tasks have all ended and A's flood is all submitted (or, with `cut_flood`, cut short)."""
    headers = {k: {"Authorization": f"Bearer {key}"} for k, key in KEYS.items()}
    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(base_url=url, headers=headers["a"], timeout=120, limits=limits) as a,
        httpx.AsyncClient(base_url=url, headers=headers["b"], timeout=120, limits=limits) as b,
    ):
        count = [0]
        flood = asyncio.create_task(post_tasks(a, args.flood, args.concurrency, count))
        while count[0] < args.burst_after and not flood.done():
            await asyncio.sleep(0.05)
        b_ids = await post_tasks(b, args.burst, args.concurrency)
        await wait_ended(b, b_ids, timeout=args.timeout)
        if args.cut_flood:
            flood.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flood


async def idle(url: str, args: Any) -> None:
    """B's tasks alone on the idle fleet, until they have all ended."""
    headers = {"Authorization": f"Bearer {KEYS['b']}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as b:
        await wait_ended(b, await post_tasks(b, args.burst, args.concurrency), timeout=args.timeout)


def run_service(args: Any, weights: str, *, with_idle: bool) -> tuple[dict[str, Any], list[float]]:
    """One service start: optionally B alone on the idle fleet, then the flood."""
    from comfy_standin.testing import StandInProcess

    data = Path(tempfile.mkdtemp(prefix="comfy-fleet-fairness-"))
    admin = postgres.find_test_server()
    name = postgres.unique_database_name("bench_fair")
    dsn = asyncio.run(postgres.create_database(admin, name))
    standins = StandInProcess(
        input_dir=data / "in", output_dir=data / "out", temp_dir=data / "tmp",
        node_delay=args.node_delay, count=args.endpoints,
    )
    for d in ("in", "out", "tmp"):
        (data / d).mkdir(parents=True, exist_ok=True)
    standins.start()
    svc = Service(data=data / "run", port=free_port(), env={
        "DATABASE_URL": dsn,
        "COMFYUI_ENDPOINTS": ",".join(m.host_port for m in standins.members),
        "TENANT_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "TENANT_WEIGHTS": weights,
        "MAX_WAITING_TASKS": str(args.flood + args.burst + 100),
        "LOG_LEVEL": "WARNING",
    })
    try:
        svc.start()
        svc.wait_ready()
        idle_waits: list[float] = []
        before: dict[str, Task] = {}
        if with_idle:
            asyncio.run(idle(svc.url, args))
            before = asyncio.run(read_tasks(dsn, ("b",)))
            idle_waits = [
                (t.dispatched - t.submitted).total_seconds() for t in before.values() if t.dispatched
            ]
        asyncio.run(flooded(svc.url, args))
        flood = {tid: t for tid, t in asyncio.run(read_tasks(dsn)).items() if tid not in before}
        return analyse(flood), idle_waits
    finally:
        svc.stop()
        standins.stop()
        asyncio.run(postgres.drop_database(admin, name))


def main(args: Any) -> None:
    from bench.common import machine

    print(
        f"service: {args.endpoints} stand-ins, {args.node_delay} s per node (solid: 2 nodes); "
        f"A floods {args.flood}, B submits {args.burst} once {args.burst_after} of A's are in; "
        f"{machine()}"
    )
    idle_median: float | None = None
    for label, weights, target, with_idle in (
        ("equal weights", "", 0.5, True), ("A:B = 3:1", "a=3,b=1", 0.25, False),
    ):
        started = time.monotonic()
        figures, idle_waits = run_service(args, weights, with_idle=with_idle)
        if idle_waits:
            idle_median = statistics.median(idle_waits)
            print(
                f"B alone on the idle fleet: median wait {idle_median:.2f} s, "
                f"p95 {pct(idle_waits, 0.95):.2f} s"
            )
        print(
            f"{label:>13}: B's share of dispatches while both wait {figures['dispatch_share']:.1%} "
            f"({figures['contested']} dispatches); of completions while B ran "
            f"{figures['completion_share_decided']:.1%} of tasks dispatched while both waited, "
            f"{figures['completion_share_all']:.1%} of all (target {target:.0%} ± 5 %); "
            f"B's median wait {figures['b_median_wait']:.2f} s, p95 {figures['b_p95_wait']:.2f} s "
            f"(idle fleet: {idle_median:.2f} s); A had {figures['a_waiting_at_b']} waiting when "
            f"B came, {figures['a_recorded']} recorded in all "
            f"[{time.monotonic() - started:.0f} s]"
        )
