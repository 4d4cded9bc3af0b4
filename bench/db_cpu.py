"""CPU seconds a phase of a benchmark costs: in this process and the children it waited for, and
in the PostgreSQL backends serving one database (found by their process titles in /proc, which
name the database, and their parallel workers). On a shared machine wall time stretches with
the load; CPU time does not, much. Linux, with the PostgreSQL server on this machine.

    with PhaseCpu("benchlog_1234") as cpu:
        ...
    print(cpu.describe())
"""

from __future__ import annotations

import os
import resource
import threading
import time
from types import TracebackType

_TICK = os.sysconf("SC_CLK_TCK")
#: Server processes that write or flush for every database (shown apart: others' work too).
_SHARED = ("walwriter", "checkpointer", "background writer")


def process_cpu_s(pid: int | str) -> float | None:
    """User + system CPU seconds a process (all its threads) used so far; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _title(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _own() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class PhaseCpu:
    """Samples /proc every `interval` seconds in a thread while the block runs. A backend's CPU is
    counted from its start (the kernel's counters are), up to its last sample: at most
    `interval` of each backend that ends within the block is missed. The sampler's own CPU is
    not counted."""

    def __init__(self, dbname: str, interval: float = 0.01) -> None:
        self.dbname = dbname
        self.interval = interval
        self.python_s = self.database_s = self.shared_s = self.wall_s = 0.0
        self._seen: dict[str, float] = {}  # our backends: pid -> CPU at the last sample
        self._shared0: dict[str, float] = {}
        self._shared: dict[str, float] = {}
        self._others: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase-cpu", daemon=True)
        self._sampler_s = 0.0

    def _scan(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in self._seen or pid in self._others:
                continue
            title = _title(pid)
            if not title.startswith("postgres:"):
                # A backend just forked has the postmaster's title until it names its database:
                # look again at the next scan.
                if "postgres" not in title:
                    self._others.add(pid)
            elif f" {self.dbname} " in f"{title} " or any(
                f"parallel worker for PID {p}" in title for p in self._seen
            ):
                self._seen[pid] = 0.0
            elif any(title.endswith(name) for name in _SHARED):
                self._shared0.setdefault(pid, process_cpu_s(pid) or 0.0)
                self._others.add(pid)
            else:
                self._others.add(pid)

    def _sample(self) -> None:
        for pid in self._seen:
            used = process_cpu_s(pid)
            if used is not None:
                self._seen[pid] = used
        for pid in self._shared0:
            used = process_cpu_s(pid)
            if used is not None:
                self._shared[pid] = used

    def _run(self) -> None:
        start = time.thread_time()
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_scan >= 5 * self.interval:
                self._scan()
                last_scan = now
            self._sample()
            self._stop.wait(self.interval)
        self._scan()
        self._sample()
        self._sampler_s = time.thread_time() - start

    def __enter__(self) -> PhaseCpu:
        self._scan()  # backends that exist already count from now, not from their start
        self._sample()
        self._before = dict(self._seen)
        self._own0 = _own()
        self._wall0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.wall_s = time.monotonic() - self._wall0
        self.python_s = _own() - self._own0 - self._sampler_s
        self.database_s = sum(v - self._before.get(p, 0.0) for p, v in self._seen.items())
        self.shared_s = sum(v - self._shared0[p] for p, v in self._shared.items())

    @property
    def total_s(self) -> float:
        return self.python_s + self.database_s

    def describe(self) -> str:
        return (f"{self.wall_s:.1f} s wall, {self.total_s:.1f} CPU-s ({self.database_s:.1f} in"
                f" PostgreSQL backends, {self.python_s:.1f} in Python; the server's WAL writer and"
                f" checkpointer, shared with other databases: {self.shared_s:.1f})")
