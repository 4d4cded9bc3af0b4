"""Fixtures for tests, ``make run`` and benchmarks.

In-process (same event loop)::

    async with run_standin(models={"checkpoints": ["a.safetensors"]}) as s:
        s.url, s.host_port, s.knobs, s.counters, s.input_dir, s.output_dir
        await s.restart()

As a subprocess (``StandInProcess(...).start()`` waits until it answers; ``restart()`` kills it
and starts it again on the same port).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .knobs import Counters, Knobs
from .server import StandIn


class RunningStandIn:
    """Handle on an in-process stand-in."""

    def __init__(self, server: StandIn, input_dir: Path, output_dir: Path, temp_dir: Path) -> None:
        self.server = server
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.temp_dir = temp_dir

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return f"ws://{self.server.host_port}"

    @property
    def host_port(self) -> str:
        return self.server.host_port

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def knobs(self) -> Knobs:
        return self.server.knobs

    @property
    def counters(self) -> Counters:
        return self.server.counters

    @property
    def models_dir(self) -> Path:
        """Its model folders (``<models_dir>/<folder>/<file>``): a file put there is listed by
        its loaders from the next ``/object_info`` or prompt on, as on the real server."""
        return self.server.model_folders.dir

    async def restart(self, down_s: float = 0.0) -> None:
        await self.server.restart(down_s)

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        """Start again after ``stop()``, on the same port."""
        await self.server.start(self.server.port)

    def drop_websockets(self) -> None:
        self.server.drop_websockets()


@contextlib.asynccontextmanager
async def run_standin(
    *,
    port: int = 0,
    input_dir: Path | str | None = None,
    output_dir: Path | str | None = None,
    temp_dir: Path | str | None = None,
    models: Mapping[str, list[str]] | None = None,
    node_delay: float = 0.0,
    models_dir: Path | str | None = None,
    model_bucket_url: str | None = None,
) -> AsyncIterator[RunningStandIn]:
    """A stand-in on 127.0.0.1 in this event loop; folders left None are temporary.
    ``model_bucket_url`` sets the knob of the same name (default: the environment's)."""
    scratch = Path(tempfile.mkdtemp(prefix="comfy-standin-"))
    try:
        ind = Path(input_dir) if input_dir else scratch / "input"
        outd = Path(output_dir) if output_dir else scratch / "output"
        tmpd = Path(temp_dir) if temp_dir else scratch / "temp"
        server = StandIn(
            input_dir=ind,
            output_dir=outd,
            temp_dir=tmpd,
            models={k: list(v) for k, v in (models or {}).items()},
            knobs=Knobs(node_delay=node_delay),
            models_dir=Path(models_dir) if models_dir else scratch / "models",
        )
        if model_bucket_url is not None:
            server.knobs.model_bucket_url = model_bucket_url
        await server.start(port)
        try:
            yield RunningStandIn(server, ind, outd, tmpd)
        finally:
            await server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def format_models(models: Mapping[str, list[str]]) -> str:
    """``{"checkpoints": ["a", "b"]}`` -> ``"checkpoints=a,b"`` (the CLI's --models syntax)."""
    return ";".join(f"{folder}={','.join(names)}" for folder, names in models.items())


class _OnLoopback:
    """`url` and `host_port` of a stand-in answering on 127.0.0.1:`port`."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class StandInAddress(_OnLoopback):
    """One stand-in of a shared process: where it answers and its directories (see
    `StandInProcess.members`)."""

    port: int
    input_dir: Path
    output_dir: Path
    #: its model folders (``--models-dir``/standin-<i>), None when the process was given none
    models_dir: Path | None = None


class StandInProcess(_OnLoopback):
    """A stand-in in its own process (``python -m comfy_standin``); with `count` > 1, that many
    stand-ins in the one process (``--count``), each at one of `members`."""

    def __init__(
        self,
        *,
        port: int = 0,
        input_dir: Path | str,
        output_dir: Path | str,
        temp_dir: Path | str | None = None,
        models: Mapping[str, list[str]] | None = None,
        node_delay: float = 0.0,
        python: str = sys.executable,
        ready_timeout_s: float = 15.0,
        count: int = 1,
        models_dir: Path | str | None = None,
    ) -> None:
        self.port = port
        self.count = count
        #: the stand-ins of this process, once started: itself, or `count` addresses
        self.members: list[StandInProcess | StandInAddress] = []
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.temp_dir = Path(temp_dir) if temp_dir else None
        self.models = dict(models or {})
        #: where pulled models go (``--models-dir``); the bucket comes from the environment's
        #: COMFY_FLEET_MODEL_BUCKET_URL or the ``model_bucket_url`` knob
        self.models_dir = Path(models_dir) if models_dir else None
        self.node_delay = node_delay
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        argv = [
            self.python,
            "-m",
            "comfy_standin",
            "--port",
            str(self.port),
            "--input-dir",
            str(self.input_dir),
            "--output-dir",
            str(self.output_dir),
            "--node-delay",
            str(self.node_delay),
        ]
        if self.temp_dir is not None:
            argv += ["--temp-dir", str(self.temp_dir)]
        if self.models:
            argv += ["--models", format_models(self.models)]
        if self.models_dir is not None:
            argv += ["--models-dir", str(self.models_dir)]
        if self.count != 1:
            argv += ["--count", str(self.count)]
        return argv

    def start(self) -> StandInProcess:
        """Start and wait until ``GET /prompt`` answers; learns the port when it was 0."""
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + self.ready_timeout_s
        assert self.proc.stdout is not None
        # A line "comfy_standin ready on 127.0.0.1:PORT" per stand-in; wait with a deadline.
        # Read the pipe's fd itself: select() on a buffered reader misses lines already in
        # its buffer (several stand-ins print theirs at once).
        fd, pending, ports = self.proc.stdout.fileno(), b"", []
        while len(ports) < self.count:
            if b"\n" not in pending:
                left = max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([fd], [], [], left)
                chunk = os.read(fd, 4096) if ready else b""
                if chunk:
                    pending += chunk
                    continue
            line, _, pending = pending.partition(b"\n")
            text = line.decode(errors="replace")
            if "ready on" not in text:
                self.stop()
                raise RuntimeError(f"comfy_standin did not start: {text!r}")
            ports.append(int(text.rsplit(":", 1)[1]))
        self.port = ports[0]
        self.members = [self] if self.count == 1 else [
            StandInAddress(
                p, self.input_dir / f"standin-{i}", self.output_dir / f"standin-{i}",
                self.models_dir / f"standin-{i}" if self.models_dir else None,
            )
            for i, p in enumerate(ports)
        ]
        for member in self.members:
            while True:
                try:
                    with urllib.request.urlopen(member.url + "/prompt", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("comfy_standin did not answer in time")
                time.sleep(0.02)
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self, down_s: float = 0.0, kill: bool = True) -> None:
        """Kill the process and start a new one on the same port (a crash and a restart)."""
        self.stop(kill=kill)
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def __enter__(self) -> StandInProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
