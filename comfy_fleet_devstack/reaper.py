"""Finding and ending every process a process started, wherever the tree was reparented.

`make run` marks itself a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): a process it
started whose parent dies (HAProxy when its Ray worker goes, Ray's workers when the raylet
goes, the PostgreSQL server `pg_ctl` leaves behind) becomes its child rather than init's, so
at stop "every process I started" is exactly "every descendant", and none escapes a stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False  # not Linux


def become_subreaper() -> bool:
    """Orphaned descendants of this process become its children (Linux); False elsewhere."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """This process gets `sig` when the thread that started it ends (Linux), as used between
    fork and exec; False elsewhere."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(int(entry))
            if info is not None and info[0] != "Z":
                result[int(entry)] = info[1]
    return result


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def reap() -> None:
    """Collect the exit status of every child of ours that has ended (zombies), so they do not
    count as alive. Children run by subprocess.Popen may be collected too: at stop only."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    """Wait until none of `pids` runs (zombies count as gone); True if so within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap()
        alive = [p for p in pids if (info := stat(p)) is not None and info[0] != "Z"]
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def end_descendants(root: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every descendant of `root`, SIGKILL what is left after `grace_s`; returns the
    pids still alive after that (expected: none)."""
    pids = descendants(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if wait_gone(pids, grace_s if sig == signal.SIGTERM else 2.0):
            break
        # whatever the first round's processes started meanwhile goes in the second
        pids = sorted(set(pids) | set(descendants(root)))
    reap()
    return [p for p in pids if (info := stat(p)) is not None and info[0] != "Z"]
