"""What an idle Ray actor costs this machine: the floor under the fleet's cost per endpoint.

Starts a local Ray (no dashboard), creates `--actors` empty async actors (no code of ours in
them), lets them settle, then reads each one's threads from /proc for `--seconds`: CPU used
and wake-ups (context switches). Prints the cost per actor by thread, and what that many idle
actors take of this machine. `bench.scale` compares 4 and 32 endpoint actors on one machine;
this is the part of the difference that is Ray's, whatever the actors do.

    .venv/bin/python -m bench.ray_idle --actors 8 --seconds 10
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)

    @ray.remote(num_cpus=0, enable_task_events=False)
    class Empty:
        async def pid(self) -> int:
            return os.getpid()

    actors = [Empty.remote() for _ in range(args.actors)]  # type: ignore[attr-defined]
    pids = ray.get([a.pid.remote() for a in actors])
    time.sleep(5.0)  # settle: worker start-up is not idle cost
    before = {p: thread_stats(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(args.seconds)
    after = {p: thread_stats(p) for p in pids}
    elapsed = time.monotonic() - t0
    cpu: dict[str, float] = {}
    wakes: dict[str, float] = {}
    for p in pids:
        for tid, (name, ns, switches) in after[p].items():
            _, ns0, sw0 = before[p].get(tid, (name, 0.0, 0))
            cpu[name] = cpu.get(name, 0.0) + (ns - ns0) / 1e6 / elapsed / len(pids)
            wakes[name] = wakes.get(name, 0.0) + (switches - sw0) / elapsed / len(pids)
    total = sum(cpu.values())
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{len(pids)} empty async actors, idle for {elapsed:.0f} s")
    print(f"CPU per idle actor: {total:.2f} ms/s; by thread (ms/s, wake-ups/s):")
    for name in sorted(cpu, key=lambda n: -cpu[n])[:6]:
        print(f"  {name:24s} {cpu[name]:6.2f} ms/s  {wakes[name]:7.1f}/s")
    main_name = max(cpu, key=lambda n: cpu[n])
    per_wake = 1000 * cpu[main_name] / max(1e-9, wakes[main_name])
    budget = 1000.0 * (os.cpu_count() or 2)
    print(f"the busiest thread ({main_name}) costs {per_wake:.0f} µs a wake-up")
    for n in (4, 16, 32):
        print(f"  {n:3d} idle actors take {n * total:6.0f} ms/s, {100 * n * total / budget:4.1f} % of this machine")
    print(f"SUMMARY ray_idle actors={len(pids)} per_actor_ms_s={total:.2f} "
          f"main_thread_ms_s={cpu[main_name]:.2f} main_wakes_s={wakes[main_name]:.0f} per_wake_us={per_wake:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
