"""Ray's real autoscaler over fake nodes, on one machine, started and stopped without touching
any other Ray on the machine.

`ray.cluster_utils.AutoscalingCluster` does the same but runs `ray stop --force` (which kills
every Ray process of the machine, other test sessions' included) and reads an example config
the installed wheel does not ship. Here: `ray start --head --block` with the fake multi-node
provider (`RAY_FAKE_CLUSTER=1`) on a port of our own, in a session of its own; `stop()` kills
that process tree only (the head's processes and the fake nodes the autoscaler started, which
are its descendants).

Each GPU node type has `max_workers: 1` and its own label `comfy-fleet/comfyui` = the address
of "its" ComfyUI: every fake node is a raylet on 127.0.0.1, so the label is how a node names its
ComfyUI (comfy_fleet/policies/placement.py), as a real worker's address does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The node type names of the fake GPU hosts, one per stand-in address.
GPU_TYPE_PREFIX = "gpu_"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    *, gcs_port: int, head_cpus: int, gpu_labels: list[str], idle_timeout_minutes: float,
    worker_cpus: float = 1,
) -> dict[str, Any]:
    """The autoscaler config: the head, and one GPU node type per ComfyUI address (min 0,
    max 1), each advertising `comfyui: 1` and the label naming its ComfyUI."""
    from comfy_fleet.policies.placement import COMFYUI_LABEL

    types: dict[str, Any] = {
        "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
    }
    for i, endpoint in enumerate(gpu_labels):
        types[f"{GPU_TYPE_PREFIX}{i}"] = {
            "resources": {"CPU": worker_cpus, "comfyui": 1},
            "labels": {COMFYUI_LABEL: endpoint},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1,
        }
    return {
        "cluster_name": "comfy-fleet-fake",
        "max_workers": len(gpu_labels),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    """A head with the autoscaler and fake GPU node types; `address` once `start()` returned."""

    def __init__(
        self, *, gpu_labels: list[str], idle_timeout_minutes: float = 0.1, head_cpus: int = 1,
        data: Path | None = None,
    ) -> None:
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.data = data or Path(tempfile.mkdtemp(prefix="comfy-fleet-autoscale-"))
        self.config = config(
            gcs_port=self.gcs_port, head_cpus=head_cpus, gpu_labels=gpu_labels,
            idle_timeout_minutes=idle_timeout_minutes,
        )
        # Ray's temp folder, short: its socket paths must fit in 107 bytes.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="cfas-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.data / "ray-head.log"

    def start(self, timeout: float = 180) -> None:
        path = self.data / "autoscaler.json"
        path.write_text(json.dumps(self.config))
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            # The autoscaler's loop: every second (its default is 5 s).
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Ray waits 30 s for a raylet to register, too little on a loaded 2-core machine.
            "RAY_raylet_start_wait_time_s": "120",
        }
        self.proc = subprocess.Popen(
            [
                ray_bin, "start", "--head", "--block", f"--port={self.gcs_port}",
                "--node-ip-address=127.0.0.1", f"--autoscaling-config={path}",
                f"--num-cpus={self.config['available_node_types']['ray.head.default']['resources']['CPU']}",
                "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={self.ray_dir}",
                # Ports of our own: other Ray instances on this machine hold the defaults.
                *(f"--{name}={free_port()}" for name in (
                    "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                    "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
                )),
            ],
            env=env, stdout=self._log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {self._log.read_text()[-3000:]}")
            # `ray start` says so once the head's GCS and raylet are up (a loaded machine
            # takes tens of seconds).
            if "Ray runtime started" in self._log.read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"the fake autoscaling cluster's head did not start in {timeout} s")

    def stop(self) -> None:
        """Kill this cluster's process tree: the head's processes and the fake nodes the
        autoscaler started (descendants of the head's monitor)."""
        if self.proc is None:
            return
        import psutil

        procs: list[Any] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        # Fake node raylets may have been reparented; they carry our session's temp dir.
        marker = str(self.ray_dir)
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(Exception):
                if marker in " ".join(p.info["cmdline"] or []) and p not in procs:
                    procs.append(p)
        for p in procs:
            with contextlib.suppress(Exception):
                p.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            with contextlib.suppress(Exception):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        self.proc = None
        keep = os.environ.get("COMFY_FLEET_KEEP_RAY_LOGS")  # a folder to copy Ray's logs to
        if keep:
            with contextlib.suppress(Exception):
                shutil.copytree(self.ray_dir, keep, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("sockets", "*.sock"))
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    shutdown = stop  # the name tests/cluster/scenario.py's Stack calls
