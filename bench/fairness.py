"""Fairness among tenants, driving FairShare directly on a simulated fleet (no service).

Tenant A floods the fleet with 5,000 tasks; a moment later tenant B submits 50. A fleet of N
slots runs each task for a given time (with optional jitter); every free slot takes the task that
`FairShare.next()` gives. Printed, for equal weights and for A:B = 3:1:

- B's share of the dispatches made while both had tasks waiting, and of the completions from B's
  first completion to its last (the contract: 50 % ± 5 % and 25 % ± 5 %), also counting only
  tasks dispatched after B came: the completions of A's tasks already running when B came fall
  in that window too, and weigh more the more slots the fleet has per task of B's burst (at 64
  slots of 4 s ± 50 % and 50 tasks of B, they take B's completion share to about a third);
- B's median and 95th-percentile wait (submit → dispatch), beside its wait on an idle fleet (the
  same 50 tasks with nothing else waiting);
- the cost of FairShare's operations at 10,000 waiting tasks.

Simulated time makes the figures independent of this machine's speed, except the last.

    python bench/fairness.py [--slots 8] [--run-s 1.0] [--jitter 0.2] [--flood 5000] [--burst 50]

With `--service`, the same flood and burst go through the real service instead (its router's
FairShare, over HTTP, on ComfyUI stand-ins): see bench/fairness_service.py.

    python bench/fairness.py --service [--endpoints 4] [--node-delay 0.05] [--flood 5000]
        [--burst 50] [--burst-after 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfy_fleet.policies import fair_share  # noqa: E402


@dataclass
class Run:
    """What one simulation observed."""

    #: tenant of each dispatch made while A and B both had tasks waiting
    contested: list[str] = field(default_factory=list)
    #: (time, tenant, dispatch time) of each completion
    completions: list[tuple[float, str, float]] = field(default_factory=list)
    #: B's waits, submit → dispatch (s)
    b_waits: list[float] = field(default_factory=list)


def simulate(
    *, weights: dict[str, int], slots: int, run_s: float, jitter: float, flood: int, burst: int,
    burst_at: float, seed: int,
) -> Run:
    rng = random.Random(seed)
    share = fair_share.FairShare(weights)
    run = Run()
    submitted: dict[str, float] = {}
    arrivals = [(0.0, "a", flood)] if flood else []
    arrivals.append((burst_at, "b", burst))
    running: list[tuple[float, int, str, float]] = []  # (finish, tiebreak, tenant, dispatched)
    free = slots
    now = 0.0
    serial = 0

    def submit(tenant: str, n: int) -> None:
        nonlocal serial
        for _ in range(n):
            serial += 1
            task_id = f"{tenant}-{serial}"
            submitted[task_id] = now
            share.push(fair_share.WaitingTask(task_id, tenant, 0, now + serial * 1e-9))

    def fill() -> None:
        nonlocal free, serial
        while free:
            contested = share.waiting_count("a") > 0 and share.waiting_count("b") > 0
            task = share.next()
            if task is None:
                return
            if contested:
                run.contested.append(task.tenant)
            if task.tenant == "b":
                run.b_waits.append(now - submitted[task.task_id])
            duration = run_s * (1 + rng.uniform(-jitter, jitter))
            serial += 1
            heapq.heappush(running, (now + duration, serial, task.tenant, now))
            free -= 1

    while arrivals or running or len(share):
        next_arrival = arrivals[0][0] if arrivals else float("inf")
        next_finish = running[0][0] if running else float("inf")
        if next_arrival <= next_finish:
            now, tenant, n = arrivals.pop(0)
            submit(tenant, n)
        else:
            now, _, tenant, dispatched = heapq.heappop(running)
            run.completions.append((now, tenant, dispatched))
            free += 1
        fill()
    return run


def b_completion_share(run: Run, since: float = float("-inf")) -> float:
    """B's share of the completions from its first to its last, counting only tasks dispatched
    at or after `since`."""
    times = [t for t, tenant, _ in run.completions if tenant == "b"]
    first, last = min(times), max(times)
    window = [
        tenant for t, tenant, at in run.completions if first <= t <= last and at >= since
    ]
    return window.count("b") / len(window)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def operations_cost(n: int = 10_000, tenants: int = 100) -> None:
    rng = random.Random(7)
    share = fair_share.FairShare({f"t{i}": rng.randint(1, 4) for i in range(tenants)})
    tasks = [
        fair_share.WaitingTask(f"x{i}", f"t{rng.randrange(tenants)}", rng.randint(0, 3), float(i))
        for i in range(n)
    ]
    started = time.perf_counter()
    for t in tasks:
        share.push(t)
    push_us = (time.perf_counter() - started) / n * 1e6
    sample = rng.sample(tasks, 1000)
    started = time.perf_counter()
    for t in sample:
        share.position(t.task_id)
    position_us = (time.perf_counter() - started) / len(sample) * 1e6
    started = time.perf_counter()
    while share.next() is not None:
        pass
    next_us = (time.perf_counter() - started) / n * 1e6
    print(
        f"FairShare at {n} waiting tasks of {tenants} tenants: push {push_us:.1f} µs, "
        f"next {next_us:.1f} µs, position {position_us:.0f} µs per call"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8, help="tasks the fleet runs at once")
    parser.add_argument("--run-s", type=float, default=1.0, help="run time of one task (s)")
    parser.add_argument("--jitter", type=float, default=0.2, help="± fraction of run time")
    parser.add_argument("--flood", type=int, default=5000, help="tenant A's tasks at t=0")
    parser.add_argument("--burst", type=int, default=50, help="tenant B's tasks, a moment later")
    parser.add_argument("--burst-at", type=float, default=0.5, help="when B submits (s)")
    parser.add_argument("--seed", type=int, default=1)
    service = parser.add_argument_group("--service: through the real service")
    service.add_argument("--service", action="store_true", help="run through the real service")
    service.add_argument("--endpoints", type=int, default=4, help="ComfyUI stand-ins")
    service.add_argument("--node-delay", type=float, default=0.05, help="stand-in seconds per node")
    service.add_argument("--burst-after", type=int, default=300, help="A's tasks in before B's")
    service.add_argument("--concurrency", type=int, default=16, help="requests in flight per tenant")
    service.add_argument("--cut-flood", action="store_true", help="stop A's flood once B is done")
    service.add_argument("--timeout", type=float, default=900, help="longest wait for B's tasks (s)")
    args = parser.parse_args()
    if args.service:
        from bench import fairness_service

        fairness_service.main(args)
        return
    common = dict(
        slots=args.slots, run_s=args.run_s, jitter=args.jitter, burst=args.burst,
        burst_at=args.burst_at, seed=args.seed,
    )
    idle = simulate(weights={}, flood=0, **common)  # type: ignore[arg-type]
    idle_median = statistics.median(idle.b_waits)
    print(
        f"fleet: {args.slots} slots, {args.run_s} s per task ± {args.jitter:.0%}; "
        f"A floods {args.flood}, B submits {args.burst} at t={args.burst_at} s"
    )
    print(f"B alone on an idle fleet: median wait {idle_median:.2f} s, p95 {pct(idle.b_waits, 0.95):.2f} s")
    for label, weights, target in (("equal weights", {}, 0.5), ("A:B = 3:1", {"a": 3}, 0.25)):
        run = simulate(weights=weights, flood=args.flood, **common)  # type: ignore[arg-type]
        dispatch_share = run.contested.count("b") / len(run.contested)
        print(
            f"{label:>13}: B's share of dispatches while both wait {dispatch_share:.1%}, "
            f"of completions {b_completion_share(run):.1%} "
            f"({b_completion_share(run, args.burst_at):.1%} of tasks dispatched after B came; "
            f"target {target:.0%} ± 5 %); "
            f"B's median wait {statistics.median(run.b_waits):.2f} s, "
            f"p95 {pct(run.b_waits, 0.95):.2f} s (idle fleet: {idle_median:.2f} s)"
        )
    operations_cost()


if __name__ == "__main__":
    main()
