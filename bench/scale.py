"""Scale: 4, 16 and 32 stand-in endpoints on one machine with N tasks waiting (default 1,000 to
keep the run near 5 minutes; docs/performance.md used 2,000; the issue's size is `--tasks 10000`), the throughput of draining them, the cost of one routing
decision (in-process micro-benchmark: `pick_endpoint` + `WaitQueue.pop_first` with 32 endpoints
and 10,000 waiting), and the memory (RSS) of each endpoint actor and of the router.

    .venv/bin/python -m bench.scale [--tasks 1000] [--endpoints 4,16,32] [--clients 64] [--standins one-process|own-process]
    .venv/bin/python -m bench.scale --micro-only

Tasks are submitted with every stand-in's worker stalled (knob `stall_worker`), so they wait in
the router (each endpoint holds only ENDPOINT_QUEUE_DEPTH prompts); then the stand-ins are
released together and the clock runs from release to the last webhook.

The stand-ins stand for GPU hosts, one machine each in a real fleet; by default they share one
process here (`--standins one-process`), so that 32 of them cost this 2-core machine one busy
process rather than 32. `--standins own-process` runs each in its own, as `make run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import httpx
import orjson

from bench.common import Receiver, cpu_report, cpu_snapshot, machine, percentile, rss_mb, service
from comfy_fleet.policies import routing

# --- the service's processes -------------------------------------------------------------------

_KINDS = ("EndpointActor", "RouterActor", "WebhookActor", "ServeReplica", "ProxyActor", "ServeController")


def _raylet_pid() -> int | None:
    """The raylet of the Ray instance this process started (other engineers' Ray instances
    run on the same machine; their workers must not be counted)."""
    try:
        import ray

        node = ray._private.worker._global_node  # noqa: SLF001 - no public accessor for it
        return int(node.all_processes["raylet"][0].process.pid)
    except Exception:
        return None


def service_processes() -> dict[str, list[int]]:
    """{kind: [pid]} of the Ray workers of our service, by their process title (`ray::Class…`)."""
    raylet = _raylet_pid()
    out: dict[str, list[int]] = defaultdict(list)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            title = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if not title.startswith("ray::") or (raylet is not None and ppid != raylet):
            continue
        for kind in _KINDS:
            if kind in title:
                out[kind].append(int(p.name))
                break
    return {k: sorted(v) for k, v in out.items()}


def rss_report(procs: dict[str, list[int]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for kind, pids in procs.items():
        vals = []
        for pid in pids:
            try:
                vals.append(rss_mb(pid))
            except OSError:
                vals.append(float("nan"))
        out[kind] = vals
    return out


def fmt_rss(rss: dict[str, list[float]]) -> str:
    parts = []
    for kind in _KINDS:
        vals = rss.get(kind)
        if not vals:
            continue
        if len(vals) == 1:
            parts.append(f"{kind} {vals[0]:.0f} MB")
        else:
            parts.append(f"{kind} x{len(vals)} {min(vals):.0f}-{max(vals):.0f} MB (sum {sum(vals):.0f})")
    return "; ".join(parts)


def router_stats() -> dict:
    import ray

    from actors.remote import NAMESPACE, ROUTER_NAME

    return ray.get(ray.get_actor(ROUTER_NAME, namespace=NAMESPACE).stats.remote(), timeout=10)


# --- the routing decision, in process -----------------------------------------------------------


def micro(endpoints: int = 32, waiting: int = 10_000, decisions: int = 20_000, depth: int = 2) -> dict[str, list[float]]:
    """Times (µs) of the router's decision as `actors/router.py` makes it: `pop_first(fits)`
    where `fits` runs `pick_endpoint` over every endpoint. `room`: some endpoint has room;
    `full`: none has, where the router looks for an endpoint with room before it scans the
    waiting tasks (a scan would try up to 64 of them against every endpoint and find none)."""
    rng = random.Random(1)
    loads = {f"127.0.0.1:{8000 + i}": routing.EndpointLoad(f"127.0.0.1:{8000 + i}", connected=True)
             for i in range(endpoints)}
    assigned: dict[str, set[str]] = {n: set() for n in loads}
    q = routing.WaitQueue()
    counter = 0

    def push() -> None:
        nonlocal counter
        counter += 1
        q.push(f"t{counter}", rng.choice((0, 0, 0, 1)), time.time(), "solid")

    for _ in range(waiting):
        push()
    out: dict[str, list[float]] = {"room": [], "full": []}
    while len(out["room"]) < decisions:
        chosen: list[routing.EndpointLoad] = []

        def effective(n: str) -> routing.EndpointLoad:
            ld = loads[n]
            ld.inflight = len(assigned[n])
            return ld

        def fits(item: routing.Waiting) -> bool:
            ep = routing.pick_endpoint((effective(n) for n in loads), depth, rng, workflow=item.workflow, labels=item.labels)
            if ep is None:
                return False
            chosen.append(ep)
            return True

        t = time.perf_counter_ns()
        some_room = any(ld.connected and not ld.draining and effective(n).load < depth for n, ld in loads.items())
        item = q.pop_first(fits) if some_room else None
        dt = (time.perf_counter_ns() - t) / 1000
        if item is None:
            out["full"].append(dt)
            # A prompt finishes somewhere: room for the next decision.
            name = rng.choice([n for n in assigned if assigned[n]])
            assigned[name].pop()
            continue
        out["room"].append(dt)
        assigned[chosen[-1].name].add(item.task_id)
        push()  # keep `waiting` tasks waiting
    return out


# --- the service --------------------------------------------------------------------------------


async def knobs(http: httpx.AsyncClient, urls: list[str], **values: object) -> None:
    await asyncio.gather(*(http.post(f"{u}/_standin/knobs", json=values) for u in urls))


async def submit(url: str, n: int, clients: int, receiver: Receiver) -> tuple[list[str], int]:
    acked: list[str] = []
    refusals = 0
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            nonlocal refusals
            for i in todo:
                body = orjson.dumps({"workflow": "solid", "params": {"width": 8, "height": 8, "color": i},
                                     "callback_url": receiver.url})
                for _ in range(50):
                    async with http.post(f"{url}/tasks", data=body, headers={"content-type": "application/json"}) as r:
                        payload = await r.read()
                        if r.status == 202:
                            acked.append(orjson.loads(payload)["task_id"])
                            break
                        refusals += 1
                        retry = float(r.headers.get("retry-after", "0.5"))
                    await asyncio.sleep(retry)

        await asyncio.gather(*(client() for _ in range(clients)))
    return acked, refusals


#: Seconds over which the idle cost of the fleet is measured (tasks waiting, prompts stalled).
IDLE_SAMPLE_S = 5.0


def webhook_stats() -> dict:
    import ray

    from actors.remote import NAMESPACE, WEBHOOKS_NAME

    return ray.get(ray.get_actor(WEBHOOKS_NAME, namespace=NAMESPACE).stats.remote(), timeout=10)


def one_size(
    endpoints: int, tasks: int, clients: int, timeout_s: float, one_process: bool
) -> dict[str, object]:
    env = {"MAX_WAITING_TASKS": str(tasks + 1000)}
    with service(endpoints=endpoints, env=env, standins_in_one_process=one_process) as (url, settings, parts):
        urls = [s.url for s in parts.standins]

        async def run() -> dict[str, object]:
            receiver = Receiver()
            await receiver.start()
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    await knobs(http, urls, stall_worker=True)
                    t = time.monotonic()
                    acked, refusals = await submit(url, tasks, clients, receiver)
                    submit_s = time.monotonic() - t
                    # The router hears of submissions by NOTIFY (and its scan): wait until it holds them all.
                    deadline = time.monotonic() + 30
                    stats = router_stats()
                    while time.monotonic() < deadline and stats["waiting"] + stats["dispatched_total"] < len(acked):
                        await asyncio.sleep(0.5)
                        stats = router_stats()
                    procs = service_processes()
                    rss_waiting = rss_report(procs)
                    # What the fleet costs while nothing runs (every prompt stalled): the fixed
                    # cost of its processes, which the drain pays on top of the work per task.
                    idle_before, idle_t = cpu_snapshot(), time.monotonic()
                    await asyncio.sleep(IDLE_SAMPLE_S)
                    idle_after = cpu_snapshot()
                    idle_ms_s = 1000 * sum(
                        max(0.0, v - idle_before.get(k, 0.0)) for k, v in idle_after.items()
                    ) / (time.monotonic() - idle_t)
                    waiting = stats["waiting"]
                    load_release = os.getloadavg()[0]
                    cpu_before = cpu_snapshot()
                    t0 = time.monotonic()
                    await knobs(http, urls, stall_worker=False)
                    deadline = t0 + timeout_s
                    most_active, polled = 0, 0.0
                    while time.monotonic() < deadline and sum(1 for a in acked if receiver.by_task.get(a)) < len(acked):
                        await asyncio.sleep(0.1)
                        if time.monotonic() - polled > 1.0:  # deliveries under way at once
                            polled = time.monotonic()
                            most_active = max(most_active, int(webhook_stats()["active"]))
                cpu_after = cpu_snapshot()
                cpu_wall_s = time.monotonic() - t0
                cpu = cpu_report(cpu_before, cpu_after, len(acked))
                cpu_s = sum(max(0.0, v - cpu_before.get(k, 0.0)) for k, v in cpu_after.items())
                last = max((ts[0] for a in acked for ts in [receiver.by_task.get(a, [])] if ts), default=t0)
                lost = sum(1 for a in acked if not receiver.by_task.get(a))
                final = router_stats()
                rss_end = rss_report(service_processes())
                return {
                    "acked": len(acked), "refusals": refusals, "submit_s": submit_s, "waiting": waiting,
                    "drain_s": last - t0, "rate": len(acked) / max(1e-9, last - t0), "lost": lost,
                    "dup": receiver.duplicates(), "rss_waiting": rss_waiting, "rss_end": rss_end,
                    "dispatched_total": final["dispatched_total"], "load": load_release, "cpu": cpu,
                    "most_active": most_active, "idle_ms_s": idle_ms_s,
                    # The drain's CPU a task, and that less what the idle fleet would have
                    # used over the same time: the work the tasks themselves cost.
                    "cpu_ms_task": 1000 * cpu_s / max(1, len(acked)),
                    "net_ms_task": (1000 * cpu_s - idle_ms_s * cpu_wall_s) / max(1, len(acked)),
                }
            finally:
                await receiver.stop()

        return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000, help="tasks waiting (the issue's size: 10000)")
    ap.add_argument("--endpoints", default="4,16,32")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the drain")
    ap.add_argument("--micro-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the sizes this many times over; the ratio is the median of the rounds'")
    ap.add_argument("--standins", choices=("one-process", "own-process"), default="one-process",
                    help="the stand-ins (GPU hosts, whose CPU is not ours) share one process, "
                         "or each has its own as under make run")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}; stand-ins: {args.standins}")
    m = micro()
    room, full = m["room"], m["full"]
    print(f"routing decision in process (32 endpoints, 10,000 waiting, depth 2), {len(room)} decisions: "
          f"p50 {percentile(room, 50):.1f} µs, p99 {percentile(room, 99):.1f} µs, max {max(room):.0f} µs; "
          f"a pass with every endpoint full ({len(full)}): p50 {percentile(full, 50):.1f} µs, "
          f"p99 {percentile(full, 99):.1f} µs (floor: p99 < 1000 µs)")
    if args.micro_only:
        print(f"SUMMARY scale micro_p99={percentile(room, 99):.1f}us full_p99={percentile(full, 99):.1f}us")
        return
    sizes = [int(x) for x in args.endpoints.split(",")]
    rounds: list[dict[int, dict[str, object]]] = []
    for n in range(args.rounds):
        results: dict[int, dict[str, object]] = {}
        for e in sizes:
            r = one_size(e, args.tasks, args.clients, args.timeout, args.standins == "one-process")
            results[e] = r
            print(f"{e:2d} endpoints{f' (round {n + 1})' if args.rounds > 1 else ''}: "
                  f"{r['acked']} tasks acknowledged in {r['submit_s']:.1f} s "
                  f"({r['refusals']} refusals retried), {r['waiting']} waiting in the router at release "
                  f"(load {r['load']:.2f}); drained in {r['drain_s']:.1f} s = {r['rate']:.1f} tasks/s; "
                  f"lost {r['lost']}, duplicated webhooks {r['dup']}")
            print("    " + str(r["cpu"]).replace("\n", "\n    "))
            print(f"    RSS with tasks waiting: {fmt_rss(r['rss_waiting'])}")  # type: ignore[arg-type]
            print(f"    RSS after the drain:    {fmt_rss(r['rss_end'])}")  # type: ignore[arg-type]
            print(f"    webhook deliveries under way at once, most seen: {r['most_active']}")
            print(f"    CPU of the whole machine while the tasks wait (prompts stalled): "
                  f"{float(r['idle_ms_s']):.0f} ms/s; the drain's CPU a task less that idle cost: "
                  f"{float(r['net_ms_task']):.1f} ms")  # type: ignore[arg-type]
        rounds.append(results)
    lo_e, hi_e = min(sizes), max(sizes)
    # This host's speed drifts from minute to minute: a ratio is taken within a round (sizes
    # run back to back), and over several rounds the median is the figure.
    ratios = sorted(float(r[hi_e]["rate"]) / float(r[lo_e]["rate"]) for r in rounds)  # type: ignore[arg-type]
    ratio = statistics.median(ratios)
    print(f"throughput at {hi_e} / at {lo_e}: {ratio:.2f} (floor 0.9)"
          + (f"; median of {len(ratios)} rounds: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""))
    # At the same CPU per task, a fixed cost F ms/s leaves (cores*1000 - F) for the work: the
    # ratio the fixed costs alone allow on this machine.
    budget = 1000.0 * (os.cpu_count() or 2)
    idle_lo = statistics.median(float(r[lo_e]["idle_ms_s"]) for r in rounds)  # type: ignore[arg-type]
    idle_hi = statistics.median(float(r[hi_e]["idle_ms_s"]) for r in rounds)  # type: ignore[arg-type]
    bound = (budget - idle_hi) / (budget - idle_lo)
    print(f"the idle cost alone allows at most {bound:.2f} at {hi_e} / {lo_e} on this machine "
          f"({idle_lo:.0f} vs {idle_hi:.0f} ms/s of {budget:.0f})")
    net = statistics.median(
        float(r[lo_e]["net_ms_task"]) / float(r[hi_e]["net_ms_task"]) for r in rounds  # type: ignore[arg-type]
    )
    print(f"the work a task costs, net of the idle cost, at {lo_e} / at {hi_e}: {net:.2f} "
          "(1.00: the tasks cost as much at either size; below: more at the larger)")
    last = rounds[-1]
    print("SUMMARY scale tasks=" + str(args.tasks) + f" rounds={len(rounds)} "
          + " ".join(f"rate_e{e}={float(r['rate']):.1f}/s" for e, r in last.items())  # type: ignore[arg-type]
          + f" ratio={ratio:.2f} idle_bound={bound:.2f} net_work_ratio={net:.2f} micro_p99={percentile(room, 99):.1f}us"
          + f" lost={sum(int(r['lost']) for rs in rounds for r in rs.values())}")  # type: ignore[call-overload]

if __name__ == "__main__":
    main()
