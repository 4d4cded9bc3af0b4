"""Autoscaling on queue depth, on this machine: Ray's real autoscaler over fake nodes.

Runs tests/cluster/autoscale_scenario.py (a head with Ray's autoscaler, two fake GPU node
types none of which runs at the start, the service with COMFYUI_DISCOVERY and AUTOSCALE, each
node's ComfyUI a stand-in started when the node appears) with a burst of `--tasks` tasks, and
prints: the time from the burst to each node's start and to the first task on a new node,
the tasks each node ran, the time until the burst is done, and how long after it the
endpoints were let go and the nodes removed. 0 lost and each task ended once, or it says so.

    PYTHONPATH=. .venv/bin/python -m bench.autoscale --tasks 40

What bounds the figures here: a fake node is a raylet on this host, so its start is Ray's own
(a few seconds on an idle 2-core machine), not a cloud instance's boot and ComfyUI's start;
the idle timeout is 0.1 min (6 s) and the quiet window 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "CLUSTER_RESULT "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.autoscale_scenario", str(args.tasks)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(f"autoscale: the scenario ran over {args.timeout:.0f} s")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(PREFIX)]
    if not lines:
        sys.exit(f"autoscale: the scenario printed no result (exit {proc.returncode})")
    r = json.loads(lines[-1][len(PREFIX):])
    if "error" in r:
        sys.exit("autoscale: the scenario failed:\n" + r["error"])

    tasks = r["tasks"]
    lost = sum(1 for t in tasks if t["status"] != "succeeded") + (r["submitted"] - len(tasks))
    not_once = sum(1 for v in r["log"].values() if v != {"ended": 1, "dispatched": 1})
    print(f"== autoscale: {machine()}")
    print(f"burst of {r['submitted']} tasks on a fleet of 0 GPU hosts (max 2), idle timeout 6 s")
    for label, at in sorted(r["nodes_joined_s"].items(), key=lambda kv: kv[1]):
        print(f"  node {label}: up {at:6.2f} s after the burst, ran {r['per_endpoint'].get(label, 0)} task(s)")
    print(f"first task on a new node: {r['first_task_on_a_new_node_s']:.2f} s after the burst")
    print(f"every task seen ended:    {r['burst_done_s']:.2f} s after the burst (polled every 0.5 s)")
    print(f"endpoints let go:         {r['endpoints_gone_s']:.2f} s after that")
    print(f"nodes removed:            {r['nodes_removed_s']:.2f} s after that")
    print(f"lost: {lost}; tasks not ended exactly once: {not_once}; whole run {r['seconds']:.0f} s")
    if lost or not_once:
        sys.exit(1)


if __name__ == "__main__":
    main()
