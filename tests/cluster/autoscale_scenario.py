"""Autoscaling on one machine: `python -m tests.cluster.autoscale_scenario [tasks]`.

Ray's real autoscaler over fake nodes (tests/cluster/fake_autoscaling.py): a head (ingress,
router, webhooks) and two GPU node types of at most one node each, none running at the start.
When a GPU node appears, its "host start-up" (a watcher here, as deploy/comfyui/start.sh after
`ray start` on a real worker) starts the ComfyUI stand-in its label names; when the node goes,
its stand-in stops with it. The service runs with COMFYUI_DISCOVERY and AUTOSCALE: a burst of
tasks must make the router ask for hosts, the tasks spread to them, and once the backlog is
gone the endpoints are drained and the nodes removed by the idle timeout.

Prints ONE line `RESULT_PREFIX + json` of what it observed (tests/cluster/test_autoscaling.py
judges it; bench/autoscale.py prints its times). Tears everything down, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from tests.cluster.fake_autoscaling import FakeAutoscalingCluster, free_port
from tests.cluster.scenario import RESULT_PREFIX, Api, Stack, say, summary, wait_until

#: seconds per workflow node in the stand-ins: a `solid` task takes about 1 s, so a burst
#: outlasts the start of the second node (Ray launches them one after the other)
NODE_DELAY = 0.6
#: Ray's idle timeout for the fake GPU nodes, minutes
IDLE_TIMEOUT_MIN = 0.1
DEFAULT_TASKS = 20


class NodeWatch:
    """The GPU nodes' "start-up": a stand-in per live node that carries a ComfyUI label, stopped
    when the node is gone. Records when each node came and went."""

    def __init__(self, stack: Stack, labels: list[str]) -> None:
        self.stack = stack
        self.labels = labels
        self.joined: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self.max_alive = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: str | None = None

    def start(self) -> NodeWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> set[str]:
        import ray

        from comfy_fleet.policies.placement import COMFYUI_LABEL

        return {
            (n.get("Labels") or {}).get(COMFYUI_LABEL)
            for n in ray.nodes()
            if n["Alive"] and (n.get("Resources") or {}).get("comfyui", 0) > 0
        } - {None}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alive = self.alive()
                self.max_alive = max(self.max_alive, len(alive))
                for label in alive - set(self.stack.standins):
                    self.joined.setdefault(label, time.monotonic())
                    self._start_standin(label)
                    say(f"node of {label} up: its stand-in started")
                for label in set(self.stack.standins) - alive:
                    self.stack.standins.pop(label).stop(kill=True)
                    self.left[label] = time.monotonic()
                    say(f"node of {label} gone: its stand-in stopped")
            except Exception:
                self.error = traceback.format_exc()
            self._stop.wait(0.25)

    def _start_standin(self, label: str) -> None:
        from comfy_standin.testing import StandInProcess
        from comfy_fleet_devstack.launch import STANDIN_MODELS

        root = self.stack.data / f"standin-{label.rsplit(':', 1)[1]}"
        for d in ("input", "output", "temp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.stack.standins[label] = StandInProcess(
            port=int(label.rsplit(":", 1)[1]), input_dir=root / "input", output_dir=root / "output",
            temp_dir=root / "temp", models=STANDIN_MODELS, node_delay=NODE_DELAY,
        ).start()


async def _log_counts(dsn: str, ids: list[str]) -> dict[str, dict[str, int]]:
    """Per task: how many final events and dispatches the log holds."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT task_id::text AS t, type, count(*) AS n FROM task_events"
            " WHERE task_id = ANY($1::uuid[]) AND type = ANY($2::text[]) GROUP BY 1, 2",
            ids, ["task.succeeded", "task.failed", "task.cancelled", "task.dispatched"],
        )
    finally:
        await conn.close()
    out: dict[str, dict[str, int]] = {t: {"ended": 0, "dispatched": 0} for t in ids}
    for r in rows:
        key = "dispatched" if r["type"] == "task.dispatched" else "ended"
        out[r["t"]][key] += int(r["n"])
    return out


def burst(s: Stack, out: dict[str, Any], n_tasks: int) -> None:
    labels = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    out["gpu_labels"] = labels
    s.cluster = FakeAutoscalingCluster(
        gpu_labels=labels, idle_timeout_minutes=IDLE_TIMEOUT_MIN, data=s.data / "cluster",
    )
    (s.data / "cluster").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    s.cluster.start()
    say(f"autoscaling head up in {time.monotonic() - t0:.1f} s")
    url = s.start_service({
        "COMFYUI_DISCOVERY": "true",
        "AUTOSCALE": "true",
        "AUTOSCALE_MAX_HOSTS": "2",
        "AUTOSCALE_WINDOW_S": "1",
        "AUTOSCALE_RELEASE_GRACE_S": "120",
        "ENDPOINT_QUEUE_DEPTH": "2",
    })
    api = Api(url)
    # Not /readyz: it wants a connected endpoint, and this fleet starts with no GPU host.
    wait_until(lambda: api.http.get("/endpoints").status_code == 200, 120, "GET /endpoints")
    watch = NodeWatch(s, labels).start()
    try:
        _burst(s, api, watch, out, n_tasks)
    finally:
        watch.stop()
        out["watch_error"] = watch.error


def _burst(s: Stack, api: Api, watch: NodeWatch, out: dict[str, Any], n_tasks: int) -> None:
    out["endpoints_before"] = sorted(api.endpoints())
    out["gpu_nodes_before"] = sorted(watch.alive())
    say(f"service ready; bursting {n_tasks} tasks")
    t_burst = time.monotonic()
    ids = api.submit(n_tasks)
    out["submitted"] = len(ids)
    first_run: float | None = None
    deadline = time.monotonic() + 240
    while True:
        tasks = [api.task(t) for t in ids]
        if first_run is None and any(t.get("endpoint") for t in tasks):
            first_run = time.monotonic()
        if all(t["status"] in ("succeeded", "failed", "cancelled") for t in tasks):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks not final: {[t['status'] for t in tasks]}")
        time.sleep(0.5)
    t_done = time.monotonic()
    out["tasks"] = summary(tasks)
    out["per_endpoint"] = dict(Counter(t.get("endpoint") for t in tasks))
    out["first_task_on_a_new_node_s"] = round((first_run or t_done) - t_burst, 2)
    out["burst_done_s"] = round(t_done - t_burst, 2)
    out["nodes_joined_s"] = {k: round(v - t_burst, 2) for k, v in watch.joined.items()}
    out["max_gpu_nodes"] = watch.max_alive
    say("every task final; waiting for the nodes to be drained and removed")
    # Drained and removed: no endpoint left, no GPU node alive.
    wait_until(lambda: not api.endpoints(), 90, "every endpoint let go", every=0.5)
    out["endpoints_gone_s"] = round(time.monotonic() - t_done, 2)
    wait_until(lambda: not watch.alive(), 120, "every GPU node removed", every=0.5)
    out["nodes_removed_s"] = round(time.monotonic() - t_done, 2)
    time.sleep(0.6)  # the watch notes a node's leaving on its next look
    out["nodes_left_s"] = {k: round(v - t_burst, 2) for k, v in watch.left.items()}
    out["log"] = asyncio.run(_log_counts(s.settings.database_url, ids))
    out["refused"] = api.refused


def main(argv: list[str]) -> int:
    from comfy_fleet_devstack.launch import RAY_ENV

    n_tasks = int(argv[0]) if argv else DEFAULT_TASKS
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import tempfile

    started = time.monotonic()
    result: dict[str, Any] = {}
    s = Stack(data=Path(tempfile.mkdtemp(prefix="comfy-fleet-autoscale-")))
    try:
        burst(s, result, n_tasks)
        say("scenario done, tearing down")
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        with contextlib.suppress(Exception):
            s.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
