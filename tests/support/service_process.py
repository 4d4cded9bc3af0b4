"""The service as `make run` starts it, as a subprocess in a process group of its own, and what
it runs: every process it started (found three ways, so a reparented one is not missed) and
every TCP socket they listen on. For tests/security (the listening-socket census, the stop
tests, a service with keys and tenants) and benchmarks that need the service configured otherwise
than the session's shared one (tests/support/fleet.py). Each start costs Ray and Serve (15-40 s
on a small machine): one per test module at most."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port, port_free

REPO = Path(__file__).resolve().parents[2]
#: Environment variable every process of one started service inherits (value: a fresh uuid).
MARK = "COMFY_FLEET_TEST_RUN"


@dataclass
class Service:
    """One `python -m comfy_fleet_devstack.run`, the entry point of `make run`."""

    data: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    mark: str = ""
    log: Path | None = None

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
            **{MARK: self.mark},
            **self.env,
        )
        self.log = self.data / f"run-{self.mark[:8]}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "comfy_fleet_devstack.run"], cwd=REPO, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def url(self) -> str:
        """The API's base URL (ROUTE_PREFIX /api/v1 unless `env` sets another)."""
        return f"http://127.0.0.1:{self.port}{self.env.get('ROUTE_PREFIX', '/api/v1')}"

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT (what Ctrl-C sends `make run`); whatever of the run is left after `timeout`
        is killed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill_everything()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until GET /api/v1/readyz answers 200; fails with the log's tail if the run exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = f"{self.url}/readyz"
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the service exited ({code}):\n{self.output()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.5)

    def wait_started(self, timeout: float = 180.0) -> None:
        """Ready, and the start-up finished (the run printed where the dashboard is): HAProxy
        reloads while Serve's replicas come up, so a census waits for this."""
        self.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while "comfy-fleet: Ray dashboard on" not in self.output():
            assert self.proc is not None and self.proc.poll() is None, self.output()[-4000:]
            assert time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(0.2)

    def signal_group(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def signal_process(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_everything(self) -> None:
        """Last resort after a failed test: SIGKILL whatever of this run still exists."""
        for pid in processes(self).keys():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.wait(5)


# --- /proc -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def processes(service: Service) -> dict[int, str]:
    """pid -> start time (a pid with another start time is another process) of every live
    process of `service`: its descendants, the members of its session, and every process
    carrying its mark in the environment (Ray's workers, HAProxy, PostgreSQL, wherever they
    were reparented)."""
    assert service.proc is not None
    root = service.proc.pid
    stats = {pid: st for pid in _pids() if (st := _stat(pid)) is not None and st[0] != "Z"}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(int(st[1]), []).append(pid)
    found = {root} if root in stats else set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    needle = f"{MARK}={service.mark}".encode()
    for pid, st in stats.items():
        if int(st[3]) == root:
            found.add(pid)
            continue
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
    return {pid: stats[pid][18] for pid in found if pid in stats}


def alive(snapshot: dict[int, str]) -> dict[int, str]:
    """The processes of `snapshot` still running (same pid and start time, not a zombie):
    pid -> command line."""
    left = {}
    for pid, started in snapshot.items():
        st = _stat(pid)
        if st is not None and st[0] != "Z" and st[18] == started:
            left[pid] = cmdline(pid)
    return left


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def _listening_inodes() -> dict[int, tuple[str, int]]:
    """socket inode -> (address, port) of every listening TCP socket (IPv4 and IPv6)."""
    found = {}
    for name, size in (("tcp", 4), ("tcp6", 16)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
                address = str(ipaddress.ip_address(raw))
                mapped = ipaddress.ip_address(raw)
                if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
                    address = str(mapped.ipv4_mapped)
                found[int(fields[9])] = (address, int(hex_port, 16))
    return found


def listeners(pids: list[int]) -> list[Listener]:
    """Every listening TCP socket held by one of `pids`."""
    inodes = _listening_inodes()
    result = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inode = int(target[8:-1])
                        if inode in inodes:
                            address, port = inodes[inode]
                            result.add(Listener(pid, cmdline(pid)[:120], address, port))
    return sorted(result, key=lambda l: (l.port, l.pid))


def wait_stopped(
    service: Service, snapshot: dict[int, str], timeout: float = 30.0
) -> dict[int, str]:
    """Wait up to `timeout` for every process of `snapshot` to end and the API port to be free;
    returns what is still alive then (empty: a clean stop)."""
    deadline = time.monotonic() + timeout
    while True:
        if service.proc is not None:
            service.proc.poll()
        # what was running then, and whatever of this run runs now (found afresh)
        left = alive(snapshot) | {pid: cmdline(pid) for pid in processes(service)}
        if not left and port_free(service.port):
            return {}
        if time.monotonic() > deadline:
            return left or {0: f"port {service.port} still taken"}
        time.sleep(0.2)
