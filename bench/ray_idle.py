"""What an idle endpoint actor costs its GPU host, and the floor under it: an empty Ray actor.

Starts the service as `make run` does with `--endpoints` stand-ins (idle: nothing is sent), and
in its Ray `--actors` empty async actors (no code of ours in them), lets them settle, then reads
the threads of both kinds from /proc over one window of `--seconds`: CPU used and wake-ups
(context switches). An endpoint actor there is connected to its stand-in (websocket, reconciler)
and polled by the router, as on a GPU host with nothing to do. Prints the cost per actor by
thread, what that many idle actors take of this machine, and the line
"idle endpoint actor: X ms CPU/s per host (Y % of one core)". `bench.scale` compares 4 and 32
endpoint actors on one machine; the empty actor is the part of the difference that is Ray's.

    .venv/bin/python -m bench.ray_idle [--actors 8] [--endpoints 2] [--seconds 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

from bench.common import machine


def thread_stats(pid: int) -> dict[str, tuple[str, float, int]]:
    """tid -> (thread name, CPU ns, context switches) of one process."""
    out: dict[str, tuple[str, float, int]] = {}
    for path in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{path}/comm") as f:
                name = f.read().strip()
            with open(f"{path}/schedstat") as f:
                ns = float(f.read().split()[0])
            with open(f"{path}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            switches = int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])
        except (OSError, KeyError, ValueError):
            continue
        out[path.rsplit("/", 1)[1]] = (name, ns, switches)
    return out


def window(groups: dict[str, list[int]], seconds: float) -> tuple[dict[str, dict[str, tuple[float, float]]], float]:
    """Each group's CPU (ms/s) and wake-ups (/s) per process by thread name, over one window."""
    pids = [p for ps in groups.values() for p in ps]
    before = {p: thread_stats(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {p: thread_stats(p) for p in pids}
    elapsed = time.monotonic() - t0
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for group, ps in groups.items():
        by: dict[str, tuple[float, float]] = {}
        for p in ps:
            for tid, (name, ns, switches) in after[p].items():
                _, ns0, sw0 = before[p].get(tid, (name, 0.0, 0))
                cpu, wakes = by.get(name, (0.0, 0.0))
                by[name] = (cpu + (ns - ns0) / 1e6 / elapsed / len(ps), wakes + (switches - sw0) / elapsed / len(ps))
        out[group] = by
    return out, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--endpoints", type=int, default=2, help="endpoint actors, each on an idle stand-in")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    import ray

    from bench.common import service
    from bench.scale import service_processes

    # The whole service as `make run` starts it: the endpoint actors connected to idle
    # stand-ins and polled by the router, as on a GPU host with nothing to do.
    with service(endpoints=args.endpoints, standins_in_one_process=True):

        @ray.remote(num_cpus=0, enable_task_events=False)
        class Empty:
            async def pid(self) -> int:
                return os.getpid()

        actors = [Empty.remote() for _ in range(args.actors)]  # type: ignore[attr-defined]
        empty = ray.get([a.pid.remote() for a in actors])
        time.sleep(5.0)  # settle: worker start-up is not idle cost
        endpoints = service_processes().get("EndpointActor", [])
        if len(endpoints) != args.endpoints:
            raise SystemExit(f"found {len(endpoints)} endpoint actors, expected {args.endpoints}")
        stats, elapsed = window({"empty": empty, "endpoint": endpoints}, args.seconds)
        load = os.getloadavg()[0]
    cpu = {name: c for name, (c, _) in stats["empty"].items()}
    wakes = {name: w for name, (_, w) in stats["empty"].items()}
    total = sum(cpu.values())
    ep_cpu = {name: c for name, (c, _) in stats["endpoint"].items()}
    ep_total = sum(ep_cpu.values())
    print(f"machine: {machine()}; load average {load:.2f}")
    print(f"{len(empty)} empty async actors and {len(endpoints)} endpoint actors (each connected to an idle "
          f"stand-in, polled by the router), idle for {elapsed:.0f} s")
    print(f"CPU per idle empty actor: {total:.2f} ms/s; by thread (ms/s, wake-ups/s):")
    for name in sorted(cpu, key=lambda n: -cpu[n])[:6]:
        print(f"  {name:24s} {cpu[name]:6.2f} ms/s  {wakes[name]:7.1f}/s")
    main_name = max(cpu, key=lambda n: cpu[n])
    per_wake = 1000 * cpu[main_name] / max(1e-9, wakes[main_name])
    budget = 1000.0 * (os.cpu_count() or 2)
    print(f"the busiest thread ({main_name}) costs {per_wake:.0f} µs a wake-up")
    for n in (4, 16, 32):
        print(f"  {n:3d} idle actors take {n * total:6.0f} ms/s, {100 * n * total / budget:4.1f} % of this machine")
    print("CPU per idle endpoint actor by thread (ms/s, wake-ups/s):")
    for name in sorted(ep_cpu, key=lambda n: -ep_cpu[n])[:6]:
        print(f"  {name:24s} {ep_cpu[name]:6.2f} ms/s  {stats['endpoint'][name][1]:7.1f}/s")
    # One endpoint actor per ComfyUI, on that ComfyUI's host: its idle cost is what each GPU host pays.
    print(f"idle endpoint actor: {ep_total:.1f} ms CPU/s per host ({ep_total / 10:.2f} % of one core); "
          f"an empty actor {total:.1f} ms/s, so {ep_total - total:.1f} ms/s is comfy-fleet's")
    print(f"SUMMARY ray_idle actors={len(empty)} per_actor_ms_s={total:.2f} "
          f"main_thread_ms_s={cpu[main_name]:.2f} main_wakes_s={wakes[main_name]:.0f} per_wake_us={per_wake:.0f} "
          f"endpoint_actor_ms_s={ep_total:.2f}")


if __name__ == "__main__":
    main()
