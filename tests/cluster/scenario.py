"""Multi-node scenarios on one machine: `python -m tests.cluster.scenario placement|discovery`.

Each run starts a Ray cluster of several nodes (`ray.cluster_utils.Cluster`), its own
PostgreSQL database, SeaweedFS and ComfyUI stand-in processes, deploys the service onto the
cluster (`RAY_ADDRESS`), drives it through the HTTP API, prints ONE line `RESULT_PREFIX + json`
of what it observed, and tears everything down (also on failure). It runs in a process of its
own because a process holds one Ray instance and the e2e suite's Ray lives in pytest's.

Observed facts only: the test (tests/cluster/test_multinode.py) decides what they must be.
Every node runs on 127.0.0.1, so each node that runs a ComfyUI carries the label
`comfy-fleet/comfyui` = "host:port" of its stand-in (comfy_fleet/policies/placement.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RESULT_PREFIX = "CLUSTER_RESULT "
ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FINAL = ("succeeded", "failed", "cancelled")
#: seconds per stand-in node: a `solid` task stays in flight long enough to be caught there
NODE_DELAY = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(message: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_until(fn: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout} s (last: {value!r})")
        time.sleep(every)


def starting(fn: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """Start a Ray node, again when it timed out: Ray waits a fixed 30 s for a node to
    register, which a loaded 2-core machine can miss (the timed-out node's processes are
    reaped with this process's group)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            say(f"{what}: {exc} (attempt {attempt}), trying again")
    raise AssertionError("unreachable")


@dataclass
class Stack:
    """Everything one scenario started, stopped in reverse by `close()`."""

    data: Path
    cluster: Any = None
    standins: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    settings: Any = None
    parts: Any = None
    admin_dsn: str | None = None
    db_name: str | None = None
    service_up: bool = False

    def standin(self) -> str:
        from comfy_standin.testing import StandInProcess
        from comfy_fleet_devstack.launch import STANDIN_MODELS

        root = self.data / f"standin-{len(self.standins)}"
        for d in ("input", "output", "temp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        proc = StandInProcess(
            input_dir=root / "input",
            output_dir=root / "output",
            temp_dir=root / "temp",
            models=STANDIN_MODELS,
            node_delay=NODE_DELAY,
        ).start()
        self.standins[proc.host_port] = proc
        return str(proc.host_port)

    def add_comfyui_node(self, endpoint: str) -> str:
        """A worker node that runs the ComfyUI `endpoint`: the resource and the label."""
        from comfy_fleet.policies.placement import COMFYUI_LABEL

        node = starting(
            lambda: self.cluster.add_node(
                num_cpus=1, resources={"comfyui": 1}, labels={COMFYUI_LABEL: endpoint}
            ),
            f"the node of {endpoint}",
        )
        self.nodes[endpoint] = node
        return str(node.node_id)

    def start_service(self, env: dict[str, str]) -> str:
        from comfy_fleet.config import Settings
        from comfy_fleet_devstack import postgres
        from comfy_fleet_devstack import launch
        from serve_app import deploy

        self.admin_dsn = postgres.find_test_server(embedded_dir=self.data / "pg")
        self.db_name = postgres.unique_database_name("cluster")
        dsn = asyncio.run(postgres.create_database(self.admin_dsn, self.db_name))
        settings = Settings.from_env(
            {
                "DATABASE_URL": dsn,
                "RAY_ADDRESS": self.cluster.address,
                "SERVICE_PORT": str(free_port()),
                "WEBHOOK_SECRET": WEBHOOK_SECRET,
                "WORKFLOWS_DIR": str(ROOT / "workflows"),
                "DEFAULT_FAILED_IMAGE_PATH": str(self.data / "failed"),
                **env,
            },
            dotenv=self.data / "none",
        )
        settings, self.parts = launch.start_local_parts(settings, self.data, say=say)
        self.settings = settings
        deploy.migrate_database(settings)
        deploy.ensure_bucket(settings)
        launch.init_ray(settings)
        self.service_up = True
        return deploy.start_service(settings)

    def close(self) -> None:
        from comfy_fleet_devstack import launch

        if self.service_up:
            with contextlib.suppress(Exception):
                launch.stop_service(self.settings)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
        for proc in self.standins.values():
            with contextlib.suppress(Exception):
                proc.stop(kill=True)
        if self.parts is not None:
            with contextlib.suppress(Exception):
                self.parts.stop()
        if self.admin_dsn and self.db_name:
            from comfy_fleet_devstack import postgres

            with contextlib.suppress(Exception):
                asyncio.run(postgres.drop_database(self.admin_dsn, self.db_name))
        shutil.rmtree(self.data, ignore_errors=True)


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    from ray.cluster_utils import Cluster

    from comfy_fleet_devstack.launch import RAY_ENV

    # Before the cluster starts: its nodes' processes inherit these.
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    s = Stack(data=Path(tempfile.mkdtemp(prefix="comfy-fleet-cluster-")))
    try:
        # The head runs no ComfyUI (no `comfyui` resource): the ingress and the router.
        s.cluster = starting(
            lambda: Cluster(
                initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
            ),
            "the head node",
        )
        yield s
    finally:
        s.close()


# --- observations ---------------------------------------------------------------------------


def node_table() -> dict[str, dict[str, Any]]:
    """NodeID → what the cluster says of the node (alive, label, comfyui resource)."""
    import ray

    from comfy_fleet.policies.placement import COMFYUI_LABEL

    return {
        n["NodeID"]: {
            "alive": bool(n["Alive"]),
            "label": (n.get("Labels") or {}).get(COMFYUI_LABEL),
            "comfyui": (n.get("Resources") or {}).get("comfyui", 0),
        }
        for n in ray.nodes()
    }


def actor_node(endpoint: str, timeout: float = 60) -> str:
    """The NodeID the endpoint actor of `endpoint` reports it runs on (waits while it is
    being created or restarted)."""
    import ray

    from actors.remote import NAMESPACE, endpoint_actor_name

    def ask() -> str | None:
        handle = _get_actor(endpoint_actor_name(endpoint), NAMESPACE)
        if handle is None:
            return None
        try:
            return str(ray.get(handle.node_id.remote(), timeout=10))
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return None  # still starting or restarting (a loaded machine): ask again

    return str(wait_until(ask, timeout, f"node of the actor of {endpoint}"))


def _get_actor(name: str, namespace: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def fleet_actors() -> list[dict[str, Any]]:
    """Where each named actor lives (the fleet's and Serve's), for the report. From the GCS
    actor table: the state API (`ray.util.state`) needs the dashboard, which these clusters
    do not run."""
    from ray._private import state

    return [
        {
            "name": a["Name"],
            "class": a["ActorClassName"],
            "node_id": a["Address"]["NodeID"],
            "state": a["State"],
            "restarts": a["NumRestarts"],
        }
        for a in state.actors().values()
        if a["Name"] and a["State"] != "DEAD"
    ]


class Api:
    """The service's HTTP API, synchronous (the scenario is a script)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.refused: list[tuple[int, str]] = []

    def ready(self, timeout: float = 120) -> None:
        wait_until(lambda: self.http.get("/readyz").status_code == 200, timeout, "GET /readyz")

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return {e["endpoint"]: e for e in self.http.get("/endpoints").json()}

    def connected(self, endpoint: str) -> bool:
        e = self.endpoints().get(endpoint)
        return bool(e and e["state"] == "connected" and e.get("workflows"))

    def submit(self, n: int) -> list[str]:
        """n `solid` tasks; returns the acknowledged ids (a refusal is kept in `refused`)."""
        ids = []
        for i in range(n):
            r = self.http.post(
                "/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8 + i}}
            )
            if r.status_code // 100 == 2:
                ids.append(r.json()["task_id"])
            else:
                self.refused.append((r.status_code, r.text))
        return ids

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/tasks/{task_id}").json())

    def finals(self, ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
        def all_final() -> list[dict[str, Any]] | None:
            tasks = [self.task(t) for t in ids]
            return tasks if all(t["status"] in FINAL for t in tasks) else None

        return list(wait_until(all_final, timeout, "every task final", every=0.3))


def summary(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": t["task_id"],
            "status": t["status"],
            "endpoint": t.get("endpoint"),
            "attempt": t.get("attempt"),
            "error": t.get("error"),
        }
        for t in tasks
    ]


# --- scenarios ------------------------------------------------------------------------------


def placement(s: Stack, out: dict[str, Any]) -> None:
    """Head without ComfyUI, two labelled worker nodes, COMFYUI_ENDPOINTS = their two stand-ins
    plus a third that no node names: where does each endpoint actor run?"""
    import ray

    labelled = [s.standin(), s.standin()]
    unmatched = s.standin()
    out.update(
        labelled_endpoints=labelled,
        unmatched_endpoint=unmatched,
        head_node_id=s.cluster.head_node.node_id,
    )
    for endpoint in labelled:
        s.add_comfyui_node(endpoint)
    url = s.start_service({"COMFYUI_ENDPOINTS": ",".join([*labelled, unmatched])})
    api = Api(url)
    api.ready()
    say("service ready")
    out["nodes"] = node_table()
    out["driver_node_id"] = ray.get_runtime_context().get_node_id()
    out["actor_node_of"] = {e: actor_node(e) for e in [*labelled, unmatched]}
    for e in [*labelled, unmatched]:
        wait_until(lambda e=e: api.connected(e), 60, f"{e} connected")
    out["tasks"] = summary(api.finals(api.submit(6)))
    out["refused"] = api.refused
    out["fleet_actors"] = fleet_actors()


def discovery(s: Stack, out: dict[str, Any]) -> None:
    """COMFYUI_DISCOVERY: one labelled node, then a second joins, then leaves with tasks in
    flight on it (its host gone: the node and its ComfyUI stop together)."""
    first, second = s.standin(), s.standin()
    out.update(first=first, second=second, head_node_id=s.cluster.head_node.node_id)
    out["first_node_id"] = s.add_comfyui_node(first)
    url = s.start_service(
        {
            "COMFYUI_DISCOVERY": "true",
            "ENDPOINT_LOST_AFTER_S": "3",
            "TASK_MAX_ATTEMPTS": "3",
            "ENDPOINT_QUEUE_DEPTH": "2",
        }
    )
    api = Api(url)
    api.ready()
    say("service ready")

    # 1. one node: its endpoint is discovered and serves.
    out["endpoints_at_start"] = sorted(api.endpoints())
    out["first_actor_node"] = actor_node(first)
    out["phase1"] = summary(api.finals(api.submit(4)))

    # 2. a second node joins: a second endpoint, and new tasks use both.
    out["second_node_id"] = s.add_comfyui_node(second)
    t0 = time.monotonic()
    wait_until(lambda: api.connected(second), 60, f"{second} discovered and connected")
    out["second_connected_after_s"] = round(time.monotonic() - t0, 2)
    out["endpoints_after_join"] = sorted(api.endpoints())
    out["second_actor_node"] = actor_node(second)
    out["phase2"] = summary(api.finals(api.submit(10)))

    # 3. the second node leaves while tasks run on it.
    out["phase3_submitted"] = 16
    ids = api.submit(out["phase3_submitted"])

    def caught_on_second() -> list[str]:
        return [
            t["task_id"]
            for t in (api.task(i) for i in ids)
            if t.get("endpoint") == second and t["status"] in ("dispatched", "running")
        ]

    wait_until(caught_on_second, 60, f"a task in flight on {second}", every=0.05)
    # The host goes away: its ComfyUI and its Ray node stop together.
    s.standins[second].stop(kill=True)
    s.cluster.remove_node(s.nodes.pop(second))
    t0 = time.monotonic()
    # What was on it when it went (a task seen running before may have finished meanwhile).
    in_flight = caught_on_second()
    out["in_flight_on_second_at_removal"] = in_flight
    say(f"node of {second} removed with {len(in_flight)} task(s) in flight there")

    # Where the second endpoint's actor lives now (soft affinity: restarted elsewhere, or gone).
    try:
        out["second_actor_after_removal"] = actor_node(second, timeout=20)
    except Exception as exc:  # reported, not judged here (the drain may have stopped it)
        out["second_actor_after_removal"] = f"{type(exc).__name__}: {exc}"

    states: list[str] = []

    def second_gone() -> bool:
        e = api.endpoints().get(second)
        if e is None:
            return True
        if not states or states[-1] != e["state"]:
            states.append(e["state"])
        return False

    wait_until(second_gone, 90, f"{second} out of GET /endpoints")
    out["second_states_until_gone"] = states
    out["second_gone_after_s"] = round(time.monotonic() - t0, 2)
    out["endpoints_after_leave"] = sorted(api.endpoints())
    out["phase3"] = summary(api.finals(ids, timeout=180))
    out["nodes"] = node_table()
    out["refused"] = api.refused
    out["fleet_actors"] = fleet_actors()


SCENARIOS: dict[str, Callable[[Stack, dict[str, Any]], None]] = {
    "placement": placement,
    "discovery": discovery,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SCENARIOS:
        print(f"usage: python -m tests.cluster.scenario {{{'|'.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    started = time.monotonic()
    # Filled as the scenario goes: on a failure, what it saw so far is reported with the error.
    result: dict[str, Any] = {}
    try:
        with stack() as s:
            SCENARIOS[argv[0]](s, result)
            say("scenario done, tearing down")
    except Exception:
        result["error"] = traceback.format_exc()
    result["seconds"] = round(time.monotonic() - started, 1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
