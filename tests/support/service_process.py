"""The service as `make run` starts it, as a subprocess in a process group of its own: the real
entry point, its own data folder (`DATA_DIR`), port and environment. With no COMFYUI_ENDPOINTS
the launcher starts its ComfyUI stand-ins; with no S3 configured, its SeaweedFS. For tests that
need the service configured otherwise than the session's shared one (tests/support/fleet.py),
e.g. with keys, and for benchmarks.

Start one per test module at most (each start costs Ray and Serve: 15-40 s on a small machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
#: The module `make run` runs.
ENTRY_POINT = "serve_app.main"
#: Environment variable every process of one started service inherits (value: a fresh uuid).
MARK = "COMFY_FLEET_TEST_RUN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """One `python -m <ENTRY_POINT>`; `env` is added to (and wins over) the inherited
    environment, from which Ray's, the service's and the database's own variables are dropped."""

    data: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    module: str = ENTRY_POINT
    proc: subprocess.Popen[bytes] | None = None
    mark: str = ""
    log: Path | None = None

    @property
    def url(self) -> str:
        """The API's base URL (ROUTE_PREFIX /api/v1 unless `env` sets another)."""
        return f"http://127.0.0.1:{self.port}{self.env.get('ROUTE_PREFIX', '/api/v1')}"

    def start(self) -> Service:
        self.mark = uuid.uuid4().hex
        self.data.mkdir(parents=True, exist_ok=True)
        dropped = ("RAY_", "SERVICE_HOST", "DATABASE_URL", "API_KEYS", "TENANT_", "COMFYUI_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(
            PYTHONPATH=str(REPO),
            SERVICE_PORT=str(self.port),
            DATA_DIR=str(self.data),
            DEFAULT_FAILED_IMAGE_PATH=str(self.data / "failed"),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # as the Makefile exports
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="disabled",
            **{MARK: self.mark},
            **self.env,
        )
        self.log = self.data / f"run-{self.mark[:8]}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=self.data, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until GET <prefix>/readyz answers 200; fails with the log's tail if the run exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the service exited ({code}):\n{self.output()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT (what Ctrl-C sends `make run`), then SIGKILL to its process group and to every
        process carrying its mark if it has not ended within `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for pid in marked_processes(self.mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries `MARK=mark` (Ray's workers, HAProxy, the
    stand-ins, wherever they were reparented)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found
