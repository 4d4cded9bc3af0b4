"""CONTRACT §7.9: `make run` stopped by SIGINT to its process leaves, within 30 s, no process of
its own behind (the embedded PostgreSQL included) and no port taken, so a start right after
on the same port and data becomes ready; and a start on a taken port refuses in one line.

(SIGTERM to the whole process group: tests/security/test_listeners.py.)"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import service_process as sp

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.s3]


def test_a_taken_port_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        svc = sp.Service(tmp_path / "data", port)
        svc.start()
        assert svc.proc is not None
        try:
            svc.proc.wait(60)
        except subprocess.TimeoutExpired:
            svc.kill_everything()
            raise
    out = svc.output().strip()
    assert svc.proc.returncode != 0
    assert out.count("\n") == 0 and f"port {port}" in out and "SERVICE_PORT" in out, out
    assert "Traceback" not in out


def test_sigint_stops_everything_and_a_start_right_after_is_ready(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = sp.Service(data, sp.free_port())  # no DATABASE_URL: the embedded PostgreSQL
    second = sp.Service(data, first.port)
    try:
        first.start().wait_started()
        snapshot = sp.processes(first)
        assert any("postgres" in sp.cmdline(pid) for pid in snapshot), "no embedded PostgreSQL"
        first.signal_process(signal.SIGINT)
        left = sp.wait_stopped(first, snapshot, timeout=30)
        assert left == {}, f"still running 30 s after SIGINT: {left}\n{first.output()[-3000:]}"
        assert first.proc is not None and first.proc.returncode == 0, first.output()[-3000:]

        second.start().wait_ready()
        snapshot = sp.processes(second)
        second.signal_group(signal.SIGTERM)
        assert sp.wait_stopped(second, snapshot, timeout=30) == {}, second.output()[-3000:]
    finally:
        first.kill_everything()
        second.kill_everything()
