"""The router at 256 and 1,024 endpoints: its dispatch decision, its heartbeats, its idle CPU.

The real router (`actors.router.Router`, its real policies) on the in-memory log, with N
endpoints as in-process fakes that answer `dispatch_many` and `status` as the endpoint actors
do (the same status fields; `task.dispatched` recorded in the log for each task taken).
No Ray, no PostgreSQL in that part: what is timed is the router and its data.

- **Decision.** 10,000 tasks wait, with mixed labels and workflows; endpoints carry one of
  four label sets, and one in five cannot run one of the workflows. Once every endpoint holds
  ENDPOINT_QUEUE_DEPTH prompts, one task ends at a time (a new one is submitted, so 10,000
  keep waiting) and the router's dispatch loop makes one pass: it sees the free slot, finds
  the first waiting task that fits an endpoint with room, and hands it out. Each pass is timed
  from the wake-up to the end of the pass (the loop does not yield within a pass), in wall
  time and in the thread's CPU time (what neighbours on a shared machine do not inflate).
- **Idle CPU.** The router with N connected endpoints and no task, over `--idle-seconds`:
  its process's CPU a second (heartbeats every HEARTBEAT_S, the scan of the log every SCAN_S).
- **A status call over Ray** (skip with `--no-ray`): an async caller actor polls K stand-in
  actors that answer an endpoint's status, in rounds of N calls as the heartbeat does: the
  caller's CPU and bytes (read/written by its process, gRPC included) per call, net of the
  same actor's idle cost; the callee's CPU per call. With the in-process part this gives what
  the heartbeat costs the router at N endpoints.

    .venv/bin/python -m bench.router_scale [--endpoints 256,1024] [--decisions 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from actors import ports
from actors import router as router_module
from bench.common import machine, percentile
from comfy_fleet.config import Settings
from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog

WAITING = 10_000
#: Label sets of the endpoints (i % 4) and what tasks ask for (weights): every ask can be met.
ENDPOINT_LABELS = (("gpu:a100", "vram:80"), ("gpu:4090", "vram:24"), ("gpu:l4", "vram:24"), ("gpu:a10",))
TASK_LABELS = (((), 50), (("vram:24",), 20), (("gpu:a100",), 15), (("gpu:4090",), 10), (("gpu:a10",), 5))
DIGEST = "0" * 64
WORKFLOWS = ["solid", "upscale", "txt2img", "img2img", "inpaint", "controlnet"]


class FakeEndpoint:
    """An endpoint actor as the router sees it: takes every task (recording its dispatch in
    the log, as the real one does before POST /prompt), and answers status with its fields."""

    def __init__(self, name: str, labels: tuple[str, ...], workflows: list[str], log: InMemoryEventLog) -> None:
        self.name, self.labels, self.workflows, self.log = name, list(labels), workflows, log
        self.running: list[str] = []
        self.status_calls = 0

    async def dispatch_many(self, task_ids: list[str], states: list[Any] | None = None) -> list[str]:
        for task_id in task_ids:
            state = await self.log.get(task_id)
            await self.log.append(task_id, state.seq, [events.TaskDispatched(
                endpoint=self.name, prompt_id=str(uuid.uuid4()), attempt=state.attempt + 1)], state)
            self.running.append(task_id)
        return [ports.ACCEPTED] * len(task_ids)

    async def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return status_of(self.name, self.labels, self.workflows)

    async def cancel(self, task_id: str) -> str:
        return "unknown"

    async def reload_workflows(self) -> list[str] | None:
        return self.workflows

    async def node_catalog(self) -> dict[str, Any] | None:
        return {"digest": DIGEST, "object_info": {}}


def status_of(name: str, labels: list[str], workflows: list[str]) -> dict[str, Any]:
    """The fields of `EndpointWorker.status()`, for a connected endpoint with nothing queued."""
    return {
        "endpoint": name, "state": "connected", "connected": True, "queue_remaining": 0,
        "inflight": 0, "foreign_queue": 0, "labels": labels,
        "last_seen": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "reconnects": 0,
        "zombies": 0, "cleanup_extension": True, "workflows": workflows,
        "node_info_digest": DIGEST,
    }


class TimedWake(asyncio.Event):
    """The router's wake-up event, timing each dispatch pass: the loop runs from the return of
    `wait()` to its next call without yielding, so that span is one pass."""

    def __init__(self, router: router_module.Router) -> None:
        super().__init__()
        self.router = router
        self.passes: list[tuple[float, float, int]] = []  # (wall µs, CPU µs, tasks handed out)
        self._t: tuple[int, int, int] | None = None

    async def wait(self) -> bool:  # type: ignore[override]
        if self._t is not None:
            w0, c0, d0 = self._t
            self.passes.append(((time.perf_counter_ns() - w0) / 1000, (time.thread_time_ns() - c0) / 1000,
                                self.router.dispatched_total - d0))
        await super().wait()
        self._t = (time.perf_counter_ns(), time.thread_time_ns(), self.router.dispatched_total)
        return True


def build(n: int, log: InMemoryEventLog) -> tuple[router_module.Router, list[FakeEndpoint]]:
    fakes = []
    for i in range(n):
        workflows = [w for w in WORKFLOWS if not (i % 5 == 0 and w == "upscale")]
        fakes.append(FakeEndpoint(f"10.0.{i // 256}.{i % 256}:8188", ENDPOINT_LABELS[i % 4], workflows, log))
    router = router_module.Router(settings=Settings(), log=log, endpoints={f.name: f for f in fakes},
                                  rng=random.Random(1))
    for f in fakes:  # labels come from the fleet's configuration, not from the status
        router.loads[f.name].labels = frozenset(f.labels)
    return router, fakes


async def submit(log: InMemoryEventLog, rng: random.Random) -> None:
    labels = rng.choices([ls for ls, _ in TASK_LABELS], [w for _, w in TASK_LABELS])[0]
    workflow = rng.choices(WORKFLOWS, [50, 20, 10, 10, 5, 5])[0]
    await log.append(str(uuid.uuid4()), 0, [events.TaskSubmitted(
        workflow=workflow, workflow_version="v1", params={}, prompt={}, priority=rng.choice((0, 0, 0, 1)),
        required_labels=list(labels))])


async def decisions(n: int, count: int) -> dict[str, Any]:
    """Fill N endpoints from 10,000 waiting, then `count` passes of one task ended, one handed out."""
    log, rng = InMemoryEventLog(), random.Random(2)
    router, fakes = build(n, log)
    for _ in range(WAITING + n * router.settings.endpoint_queue_depth):  # 10,000 wait once all are busy
        await submit(log, rng)
    wake = router._wake = TimedWake(router)  # noqa: SLF001 - the bench times the router's own loop
    await router.start()
    depth = router.settings.endpoint_queue_depth
    while router.dispatched_total < n * depth or any(len(f.running) < depth for f in fakes):
        await asyncio.sleep(0.01)
    fill = max(wake.passes, key=lambda p: p[2])
    wake.passes.clear()
    for _ in range(count):
        fake = rng.choice([f for f in fakes if f.running])
        task_id = fake.running.pop(rng.randrange(len(fake.running)))
        state = await log.get(task_id)
        await submit(log, rng)  # 10,000 keep waiting
        await log.append(task_id, state.seq, [events.TaskSucceeded(prompt_id=state.prompt_id or "")], state)
        for _ in range(3):  # the pass, then its dispatch_many
            await asyncio.sleep(0)
    await router.stop()
    one = [p for p in wake.passes if p[2] == 1]
    return {"fill": fill, "one": one, "waiting": len(router.waiting), "passes": len(wake.passes)}


async def idle(n: int, seconds: float) -> dict[str, float]:
    """The router's CPU a second with N connected endpoints and no task."""
    gc.collect()  # not the previous run's garbage
    log = InMemoryEventLog()
    router, fakes = build(n, log)
    await router.start()
    await asyncio.sleep(router_module.HEARTBEAT_S + 0.5)  # settled: every endpoint connected
    calls0, c0, t0 = sum(f.status_calls for f in fakes), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    calls = sum(f.status_calls for f in fakes) - calls0
    await router.stop()
    return {"ms_s": 1000 * cpu / wall, "calls_s": calls / wall, "us_call": 1e6 * cpu / max(1, calls)}


def ray_status_call(per_round: int, rounds: int, targets: int) -> dict[str, float]:
    """One heartbeat's status call over Ray, as the router makes it, measured on both ends."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    options = {"num_cpus": 0, "max_concurrency": 10_000, "enable_task_events": False}

    def io() -> tuple[int, int]:
        """TCP bytes (received, sent) of this process's sockets, from `ss` (gRPC's sendmsg and
        recvmsg do not show in /proc/self/io)."""
        import subprocess

        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=False).stdout
        mine, got, sent = False, 0, 0
        for line in out.splitlines():
            if not line.startswith(("\t", " ")):
                mine = f"pid={os.getpid()}," in line
            elif mine:
                for field in line.split():
                    if field.startswith("bytes_received:"):
                        got += int(field.split(":")[1])
                    elif field.startswith("bytes_sent:"):
                        sent += int(field.split(":")[1])
        return got, sent

    @ray.remote(**options)
    class Endpoint:
        def __init__(self, name: str) -> None:
            self.name = name

        async def status(self) -> dict[str, Any]:
            return status_of(self.name, list(ENDPOINT_LABELS[1]), WORKFLOWS)

        async def cpu(self) -> float:
            return time.process_time()

    @ray.remote(**options)
    class Caller:
        async def beat(self, handles: list[Any], per_round: int, rounds: int) -> dict[str, float]:
            async def call(h: Any) -> Any:
                return await asyncio.wait_for(h.status.remote(), router_module.HEARTBEAT_TIMEOUT_S)

            await asyncio.gather(*(call(h) for h in handles))  # connections made
            span = 2.0 * rounds  # the idle cost of this actor over as long as the calls take at most
            (r0, w0), c0 = io(), time.process_time()
            await asyncio.sleep(span)
            base_cpu, (r1, w1) = (time.process_time() - c0) / span, io()
            base_r, base_w = (r1 - r0) / span, (w1 - w0) / span
            (r0, w0), c0, t0 = io(), time.process_time(), time.monotonic()
            for _ in range(rounds):
                await asyncio.gather(*(call(handles[i % len(handles)]) for i in range(per_round)))
            cpu, wall = time.process_time() - c0, time.monotonic() - t0
            r1, w1 = io()
            calls = per_round * rounds
            return {"us_call": 1e6 * (cpu - base_cpu * wall) / calls, "idle_ms_s": 1000 * base_cpu,
                    "read_b": (r1 - r0 - base_r * wall) / calls, "written_b": (w1 - w0 - base_w * wall) / calls,
                    "calls_s": calls / wall}

    try:
        handles = [Endpoint.remote(f"10.0.0.{i}:8188") for i in range(targets)]  # type: ignore[attr-defined]
        caller = Caller.remote()  # type: ignore[attr-defined]
        before = ray.get([h.cpu.remote() for h in handles])
        t0 = time.monotonic()
        out = ray.get(caller.beat.remote(handles, per_round, rounds))
        after = ray.get([h.cpu.remote() for h in handles])
        # The callees' CPU per call, less an empty actor's idle cost (about 8 ms/s) over the time.
        spent = sum(after) - sum(before) - targets * 0.008 * (time.monotonic() - t0)
        out["callee_us_call"] = 1e6 * spent / (per_round * rounds)
        return out
    finally:
        ray.shutdown()


def report(n: int, d: dict[str, Any], i: dict[str, float], ray_call: dict[str, float] | None) -> dict[str, float]:
    wall = [p[0] for p in d["one"]]
    cpu = [p[1] for p in d["one"]]
    fw, fc, fn = d["fill"]
    print(f"{n} endpoints, {d['waiting']} waiting:")
    print(f"  one dispatch decision ({len(cpu)} passes handing out one task): CPU p50 {percentile(cpu, 50):.0f} µs, "
          f"p99 {percentile(cpu, 99):.0f} µs; wall p50 {percentile(wall, 50):.0f} µs, p99 {percentile(wall, 99):.0f} µs "
          "(target p99 < 1000 µs)")
    print(f"  filling the empty fleet: {fn} tasks in one pass of {fw / 1000:.0f} ms ({fc / max(1, fn):.0f} µs CPU each)")
    print(f"  idle, no task: router {i['ms_s']:.1f} ms CPU/s in process ({i['calls_s']:.0f} status calls/s, "
          f"{i['us_call']:.0f} µs each with everything else the router does)")
    out = {"p50": percentile(cpu, 50), "p99": percentile(cpu, 99), "wall_p99": percentile(wall, 99), "idle": i["ms_s"]}
    if ray_call is not None:
        b = ray_call["read_b"] + ray_call["written_b"]
        calls_s = i["calls_s"]  # as the router polled in the idle run
        total = i["ms_s"] + calls_s * ray_call["us_call"] / 1000
        print(f"  heartbeat per endpoint: {calls_s / n:.2f} calls/s, {calls_s / n * b:.0f} B/s; for {n}: "
              f"{calls_s:.0f} calls/s, {calls_s * b / 1024:.0f} KiB/s; the endpoint's side "
              f"{calls_s / n * ray_call['callee_us_call'] / 1000:.2f} ms CPU/s")
        print(f"  router at idle with Ray's calls: {total:.0f} ms CPU/s = {total / 10:.1f} % of one core "
              f"(in process {i['ms_s']:.1f} + {calls_s:.0f} calls/s × {ray_call['us_call']:.0f} µs)")
        every = n / router_module.HEARTBEAT_S  # a call to each endpoint every HEARTBEAT_S, uncapped
        print(f"  (a status call to each every {router_module.HEARTBEAT_S:.0f} s would be {every:.0f} calls/s: "
              f"{every * ray_call['us_call'] / 1000:.0f} ms CPU/s of Ray calls, {every * b / 1024:.0f} KiB/s)")
        out |= {"ray_total": total, "kib_s": calls_s * b / 1024}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", default="256,1024")
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--idle-seconds", type=float, default=16.0)
    ap.add_argument("--no-ray", action="store_true", help="skip the status call over Ray")
    args = ap.parse_args()
    sizes = [int(x) for x in args.endpoints.split(",")]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    ray_call = None
    if not args.no_ray:
        ray_call = ray_status_call(per_round=256, rounds=10, targets=8)
        print(f"a status call over Ray ({ray_call['calls_s']:.0f} calls/s in rounds of 256): caller "
              f"{ray_call['us_call']:.0f} µs CPU, callee {ray_call['callee_us_call']:.0f} µs CPU; "
              f"{ray_call['written_b']:.0f} B written and {ray_call['read_b']:.0f} B read by the caller "
              f"(an idle async actor: {ray_call['idle_ms_s']:.1f} ms/s)")
    summary = []
    for n in sizes:
        d = asyncio.run(decisions(n, args.decisions))
        i = asyncio.run(idle(n, args.idle_seconds))
        r = report(n, d, i, ray_call)
        summary.append(f"p99_{n}={r['p99']:.0f}us idle_{n}={r['idle']:.1f}ms_s"
                       + (f" with_ray_{n}={r['ray_total']:.0f}ms_s traffic_{n}={r['kib_s']:.0f}KiB_s" if "ray_total" in r else ""))
    ray_part = f" status_call_us={ray_call['us_call']:.0f}" if ray_call else ""
    print(f"SUMMARY router_scale {' '.join(summary)}{ray_part} load={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
