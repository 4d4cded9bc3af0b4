"""`make run`: start everything that is missing, serve the API until SIGINT or SIGTERM, then
stop every process that was started.

Two processes. This one, the supervisor, starts the local parts (an embedded PostgreSQL,
SeaweedFS, ComfyUI stand-ins), then forks the Ray driver, which starts a local Ray and
deploys the service. The supervisor imports no Ray, so it survives what kills a Ray driver: a
SIGTERM to the whole process group (systemd, most supervisors) reaches Ray's raylet and
workers at the same moment as the driver, and Ray's core worker then ends the driver before
its cleanup runs. The supervisor is also the subreaper of everything below it (HAProxy when
its Ray worker dies, PostgreSQL after `pg_ctl` leaves), so at stop it waits for the driver
(at most DRIVER_STOP_S), stops the parts, ends every descendant still alive, and exits:
everything within about 30 s, every port free.

The data (embedded PostgreSQL, SeaweedFS, stand-ins' files, Ray's token) lives in `./data`,
or in `DATA_DIR` when set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from comfy_fleet import errors
from comfy_fleet.config import REPO_ROOT, Settings
from comfy_fleet_devstack import launch, ray_token, reaper

#: How long a stopping Ray driver may take before it is killed (ray.shutdown() takes 1-3 s).
DRIVER_STOP_S = 15.0


def say(message: str) -> None:
    print(f"comfy-fleet: {message}", flush=True)


class Stop(Exception):
    """A stop signal arrived while starting."""


class _Signals:
    """SIGINT/SIGTERM: abort the start-up (raise Stop in the main thread) or, once serving,
    end the wait. While stopping, further signals are ignored so the cleanup completes."""

    def __init__(self) -> None:
        self.serving = False
        self.stop = threading.Event()
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        already = self.stop.is_set()
        self.stop.set()
        if not self.serving and not already:
            raise Stop(signal.Signals(signum).name)

    def stopping(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _checked_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except errors.ConfigError as exc:
        sys.exit(f"comfy-fleet: configuration error: {exc}")
    from comfy_fleet.workflows.registry import WorkflowRegistry

    _, problems = WorkflowRegistry.load(settings.workflows_dir)
    if problems:
        sys.exit(f"comfy-fleet: configuration error: WORKFLOWS_DIR: {problems[0].message}")
    taken = launch.port_holder(settings.service_host, settings.service_port)
    if taken:
        sys.exit(
            f"comfy-fleet: port {settings.service_port} on {settings.service_host} "
            f"is taken ({taken}): "
            "stop what holds it, or set SERVICE_PORT"
        )
    return settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signals = _Signals()
    settings = _checked_settings()
    data_dir = Path(os.environ.get("DATA_DIR") or REPO_ROOT / "data").resolve()
    reaper.become_subreaper()
    _stop_with_make()
    if not settings.ray_address:
        token = ray_token.enable(data_dir)
        say(f"Ray: token authentication on, token in {ray_token.hint(token)}")
    if not settings.api_keys and not settings.tenant_keys:
        say(f"API_KEYS is not set: serving on loopback only ({settings.service_host})")
    parts = None
    driver = 0
    code = 1
    try:
        settings, parts = launch.start_local_parts(settings, data_dir, say=say)
        # made here, so it is removed even when the driver dies
        driver = _fork_driver(settings, launch.new_haproxy_dir())
        signals.serving = True
        code = _supervise(driver, signals)
    except Stop as exc:
        say(f"{exc} while starting")
        code = 0
    finally:
        signals.stopping()
        say("stopping")
        if driver:
            code = _stop_driver(driver, code)
        if parts is not None:
            parts.stop()
        left = reaper.end_descendants(os.getpid(), grace_s=5.0)
        launch.remove_haproxy_dirs()
        say("stopped" if not left else f"stopped; still alive after SIGKILL: {left}")
    sys.exit(code)


def _stop_with_make() -> None:
    """Under `make run`, a signal to make's process alone (not its group) ends make and
    would leave this process serving: SIGTERM here when make goes, so it stops as well."""
    parent = os.getppid()
    try:
        name = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return
    armed = name in ("make", "gmake") and reaper.die_with_parent(signal.SIGTERM)
    if armed and os.getppid() != parent:
        sys.exit("comfy-fleet: make has stopped")  # it went before the signal was armed


def _fork_driver(settings: Settings, haproxy_dir: str) -> int:
    """Fork the Ray driver; returns its pid. The child never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = _drive(settings, haproxy_dir)
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: the supervisor's exit handlers (the embedded PostgreSQL's among them)
        # were inherited by the fork and must not run here.
        os._exit(code)


def _drive(settings: Settings, haproxy_dir: str) -> int:
    """The Ray driver: migrate, start Ray, deploy, serve until a signal, shut Ray down."""
    signals = _Signals()
    try:
        applied = launch.deploy.migrate_database(settings)
        say(f"database ready ({len(applied)} migration(s) applied)")
        launch.deploy.ensure_bucket(settings)
        launch.init_ray(settings, dashboard=True, haproxy_dir=haproxy_dir)
        signals.install()  # ray.init() puts its own SIGTERM handler (sys.exit) in their place
        url = launch.deploy.start_service(settings)
        say(f"API on {url} (docs: http://{settings.service_host}:{settings.service_port}/docs)")
        say(f"Ray dashboard on http://{_dashboard_url()}")
        signals.serving = True
        if not signals.stop.is_set():
            signals.stop.wait()
    except Stop:
        pass
    finally:
        signals.stopping()
        launch.stop_service(settings)
    return 0


def _supervise(driver: int, signals: _Signals) -> int:
    """Wait until the driver ends (its exit code) or a signal arrives (0)."""
    while not signals.stop.is_set():
        pid, status = os.waitpid(driver, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
        signals.stop.wait(0.2)
    return 0


def _stop_driver(driver: int, code: int) -> int:
    """SIGTERM to the driver (if it still runs), SIGKILL after DRIVER_STOP_S; returns `code`,
    or the driver's exit code when it ended with an error on its own."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(driver, signal.SIGTERM)
    deadline = time.monotonic() + DRIVER_STOP_S
    while True:
        try:
            pid, status = os.waitpid(driver, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid:
            return code
        if time.monotonic() > deadline:
            say(f"the Ray driver did not stop within {DRIVER_STOP_S:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(driver, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def _dashboard_url() -> str:
    import ray

    node = ray._private.worker.global_worker.node
    return str(getattr(node, "address_info", {}).get("webui_url") or "127.0.0.1:8265")


if __name__ == "__main__":
    main()
