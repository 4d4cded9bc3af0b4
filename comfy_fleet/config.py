"""Settings: read once, at the edge, from the environment (and a `.env` file), then passed down.

`Settings.from_env(environ)` is the only code that reads configuration. A bad value raises
`errors.ConfigError` whose message is one line naming the variable; secrets never appear in it.
The names of the original ComfyUI-server keep their meaning (docs/api.md §2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from comfy_fleet import env, errors

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoint:
    """One ComfyUI server: its canonical `host:port` name and base URLs."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        return self._netloc

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self._netloc}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://{self._netloc}/ws"


def parse_endpoint(raw: str, variable: str = "COMFYUI_ENDPOINTS") -> Endpoint:
    """`host:port` or `http(s)://host:port` → Endpoint; anything else is a ConfigError."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise errors.ConfigError(f"{variable}: {raw!r} is not host:port ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise errors.ConfigError(f"{variable}: {raw!r} is not host:port or http(s)://host:port")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise errors.ConfigError(f"{variable}: {raw!r} must be only scheme, host and port")
    if not 0 < port < 65536:
        raise errors.ConfigError(f"{variable}: port {port} out of range")
    return Endpoint(host=parts.hostname, port=port, scheme=parts.scheme)


#: Field metadata of a setting whose value is a secret: ``repr`` shows only whether it is set.
SECRET: Mapping[str, Any] = {"secret": True}
#: Settings holding a URL that may carry a password (in its user info or its query).
_URL_SETTINGS = frozenset({"database_url", "s3_endpoint_url", "ray_address"})


def _redacted_url(url: str) -> str:
    """``url`` with the password of its user info and its whole query replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    except ValueError:
        return "***"
    return parts._replace(netloc=netloc, query="***" if parts.query else "").geturl()


def _shown(name: str, value: Any, secret: bool) -> str:
    if secret:
        return repr(value) if not value else repr("***")
    if name in _URL_SETTINGS and isinstance(value, str):
        return repr(_redacted_url(value))
    return repr(value)


def _autoscale(r: Any) -> dict[str, Any]:
    """The AUTOSCALE_* settings; autoscaling needs discovery (new hosts get endpoints by it)."""
    on = r.bool("AUTOSCALE", False)
    if on and not r.bool("COMFYUI_DISCOVERY", False):
        raise errors.ConfigError("AUTOSCALE: true needs COMFYUI_DISCOVERY=true (new hosts join by discovery)")
    low = r.int("AUTOSCALE_MIN_HOSTS", 0, minimum=0)
    return dict(
        autoscale=on,
        autoscale_min_hosts=low,
        autoscale_max_hosts=r.int("AUTOSCALE_MAX_HOSTS", max(4, low), minimum=max(1, low)),
        autoscale_window_s=r.float("AUTOSCALE_WINDOW_S", 10.0),
        autoscale_release_grace_s=r.float("AUTOSCALE_RELEASE_GRACE_S", 600.0),
    )


@dataclass(frozen=True, repr=False)
class Settings:
    """Every setting of comfy-fleet. Defaults follow docs/api.md §2.

    ``repr`` and ``str`` show every setting but no secret: a field with ``metadata=SECRET``
    reads ``'***'`` when set, and URLs lose their password and query.
    """

    comfyui_endpoints: tuple[Endpoint, ...] = ()
    #: True when COMFYUI_ENDPOINTS was not given: `make run` starts stand-ins.
    use_standins: bool = True
    database_url: str | None = None
    s3_bucket: str = "comfy-fleet"
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = field(default=None, metadata=SECRET)
    aws_secret_access_key: str | None = field(default=None, metadata=SECRET)
    default_failed_image_path: Path = REPO_ROOT / "data" / "failed"
    service_host: str = "127.0.0.1"
    service_port: int = 8000
    route_prefix: str = "/api/v1"
    workflows_dir: Path = REPO_ROOT / "workflows"
    webhook_secret: str | None = field(default=None, metadata=SECRET)
    api_keys: tuple[str, ...] = field(default=(), metadata=SECRET)
    #: `TENANT_KEYS`: (tenant, key) pairs (docs/api.md §7.1).
    tenant_keys: tuple[tuple[str, str], ...] = field(default=(), metadata=SECRET)
    #: `TENANT_WEIGHTS`: (tenant, weight) pairs; a tenant not listed has weight 1.
    tenant_weights: tuple[tuple[str, Fraction], ...] = ()
    #: `TENANT_MAX_WAITING`: the most tasks one tenant may have waiting (None: no cap).
    tenant_max_waiting: int | None = None
    allow_open_bind: bool = False
    ray_address: str | None = None
    #: Discovery mode: every Ray node with the `comfyui` resource gets an endpoint.
    comfyui_discovery: bool = False
    comfyui_discovery_port: int = 8188
    #: ComfyUI queue depth we keep per endpoint (late binding: tasks wait in the router).
    endpoint_queue_depth: int = 2
    #: Ask Ray's autoscaler for GPU hosts on queue depth (comfy_fleet/policies/autoscale.py).
    autoscale: bool = False
    autoscale_min_hosts: int = 0
    autoscale_max_hosts: int = 4
    autoscale_window_s: float = 10.0
    autoscale_release_grace_s: float = 600.0
    #: Tasks waiting in the router above which POST /tasks answers 429.
    max_waiting_tasks: int = 10_000
    #: Dispatch attempts of one task before it fails with `endpoint_lost`.
    task_max_attempts: int = 3
    #: An endpoint unreachable this long has its in-flight prompts dispatched elsewhere.
    endpoint_lost_after_s: float = 30.0
    #: Seconds between reads of each ComfyUI's /object_info while connected (0: only at connect
    #: and after a model pull), so model files copied onto a host are found.
    node_info_refresh_s: float = 60.0
    #: Seconds between refreshes of the fold snapshot while the service runs (0: never; then
    #: only `make rebuild` and `make fold-snapshot` write it).
    fold_snapshot_s: float = 900.0
    webhook_max_attempts: int = 8
    webhook_timeout_s: float = 10.0
    webhook_max_delay_s: float = 300.0
    #: Webhook deliveries under way at once, in all and to one receiver (a URL's origin).
    webhook_max_in_flight: int = 256
    webhook_max_per_receiver: int = 64
    presign_expiry_s: int = 3600
    max_body_bytes: int = 32 * 1024 * 1024
    max_string_length: int = 10_000
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    input_fetch_timeout_s: float = 20.0
    #: Models by URL (docs/api.md §7.5): the largest model fetched, the disk budget of fetched
    #: models per ComfyUI host, and the time limit of one fetch into the bucket.
    max_model_bytes: int = 32 * 1024**3
    model_cache_bytes: int = 50 * 1024**3
    model_fetch_timeout_s: float = 3600.0
    #: Outgoing-URL policy (callbacks, image URLs): comfy_fleet/policies/url_policy.py has the precedence.
    url_deny_hosts: tuple[str, ...] = ()
    url_deny_cidrs: tuple[str, ...] = ()
    url_allow_cidrs: tuple[str, ...] = ()
    url_deny_private: bool = False
    ingress_replicas: int = 1
    ingress_max_ongoing_requests: int = 256
    #: What takes HTTP for a local Ray: "haproxy" (Ray Serve's HAProxy ingress, requests go
    #: straight to the replicas) or "serve" (Serve's Python proxy actor). docs/performance.md.
    ingress_proxy: str = "haproxy"
    log_level: str = "INFO"
    #: `RAW_GRAPHS`: POST /tasks may carry an API-format graph (docs/api.md §7.4); admin keys
    #: only unless `RAW_GRAPHS_TENANTS` lets tenant keys too.
    raw_graphs: bool = False
    raw_graphs_tenants: bool = False
    #: `RAW_GRAPH_ALLOW_NODES`: the node classes a raw graph may use (empty: any the fleet has).
    raw_graph_allow_nodes: tuple[str, ...] = ()
    raw_graph_max_nodes: int = 500

    def __repr__(self) -> str:
        shown = (
            f"{f.name}={_shown(f.name, getattr(self, f.name), bool(f.metadata.get('secret')))}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = None) -> Settings:
        """Build settings from `environ` (default os.environ) over a `.env` file in the cwd.
        Each group of settings is read (and checked) by a function of its own below."""
        base = dict(env.read_dotenv(dotenv if dotenv is not None else Path.cwd() / ".env"))
        base.update(os.environ if environ is None else environ)
        r = env.Reader(base)
        endpoints = _endpoints(r)
        return cls(
            comfyui_endpoints=endpoints,
            use_standins=not endpoints and not r.bool("COMFYUI_DISCOVERY", False),
            **_storage(r),
            **_http(r),
            **_access(r),
            **_outgoing(r),
            **_fleet(r),
            **_limits(r),
            **_autoscale(r),
            log_level=(r.str("LOG_LEVEL", "INFO") or "INFO").upper(),
            raw_graphs=r.bool("RAW_GRAPHS", False),
            raw_graphs_tenants=r.bool("RAW_GRAPHS_TENANTS", False),
            raw_graph_allow_nodes=tuple(r.list("RAW_GRAPH_ALLOW_NODES")),
            raw_graph_max_nodes=r.int("RAW_GRAPH_MAX_NODES", 500, minimum=1, maximum=10_000),
        )

    @property
    def weights(self) -> dict[str, Fraction]:
        """`tenant_weights` as a mapping (FairShare's argument)."""
        return dict(self.tenant_weights)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rdb_dsn(r: env.Reader) -> str | None:
    """The original ComfyUI-server's RDB_* variables, when any is set."""
    names = ("RDB_USERNAME", "RDB_PASSWORD", "RDB_HOST", "RDB_PORT", "RDB_NAME")
    if not any(r.str(n) for n in names):
        return None
    user = quote(r.str("RDB_USERNAME", "postgres") or "postgres", safe="")
    password = r.str("RDB_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    port = r.int("RDB_PORT", 5432, minimum=1, maximum=65535)
    host = r.str("RDB_HOST", "127.0.0.1")
    name = r.str("RDB_NAME", "comfy_fleet")
    return f"postgresql://{auth}@{host}:{port}/{name}"


# --- reading the settings, one group at a time (each returns Settings fields) -----------------


def _endpoints(r: env.Reader) -> tuple[Endpoint, ...]:
    endpoints = tuple(parse_endpoint(item) for item in r.list("COMFYUI_ENDPOINTS"))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise errors.ConfigError("COMFYUI_ENDPOINTS: an endpoint is listed twice")
    return endpoints


def _storage(r: env.Reader) -> dict[str, Any]:
    """The database and the object store."""
    return {
        "database_url": r.str("DATABASE_URL") or _rdb_dsn(r),
        "s3_bucket": r.str("S3_BUCKET", "comfy-fleet") or "comfy-fleet",
        "s3_region": r.str("S3_REGION_NAME", "us-east-1") or "us-east-1",
        "s3_endpoint_url": r.str("S3_ENDPOINT_URL"),
        "aws_access_key_id": r.str("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": r.str("AWS_SECRET_ACCESS_KEY"),
        "default_failed_image_path": Path(
            r.str("DEFAULT_FAILED_IMAGE_PATH") or Settings.default_failed_image_path
        ),
    }


def _http(r: env.Reader) -> dict[str, Any]:
    """Where the API listens, under which prefix, and what it serves."""
    prefix = r.str("ROUTE_PREFIX", "/api/v1") or ""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/") or " " in prefix):
        raise errors.ConfigError(f"ROUTE_PREFIX: {prefix!r} must start with '/' and not end with '/'")
    workflows_dir = Path(r.str("WORKFLOWS_DIR") or Settings.workflows_dir)
    if not workflows_dir.is_dir():
        raise errors.ConfigError(f"WORKFLOWS_DIR: {workflows_dir} is not a folder")
    return {
        "service_host": r.str("SERVICE_HOST", "127.0.0.1") or "127.0.0.1",
        "service_port": r.int("SERVICE_PORT", 8000, minimum=1, maximum=65535),
        "route_prefix": prefix,
        "workflows_dir": workflows_dir,
        "ingress_replicas": r.int("INGRESS_REPLICAS", 1, minimum=1),
        "ingress_max_ongoing_requests": r.int("INGRESS_MAX_ONGOING_REQUESTS", 256, minimum=1),
        "ingress_proxy": r.choice("INGRESS_PROXY", ("haproxy", "serve"), "haproxy"),
    }


def _access(r: env.Reader) -> dict[str, Any]:
    """Keys, roles and tenants (docs/api.md §7.1). A key listed twice, a malformed pair, weight
    or cap stops the start with a line naming the variable (never the key)."""
    from comfy_fleet.policies import access

    api_keys = access.parse_api_keys(r.str("API_KEYS"))
    tenant_keys = access.parse_tenant_keys(r.str("TENANT_KEYS"))
    access.KeyRing.build(api_keys, tenant_keys)
    host = r.str("SERVICE_HOST", "127.0.0.1") or "127.0.0.1"
    allow_open = r.bool("ALLOW_UNAUTHENTICATED_BIND", False)
    if not api_keys and not tenant_keys and not is_loopback(host) and not allow_open:
        raise errors.ConfigError(
            f"SERVICE_HOST: binding {host} without API_KEYS is refused "
            "(set API_KEYS, or ALLOW_UNAUTHENTICATED_BIND=true to accept the risk)"
        )
    weights = access.parse_tenant_weights(r.str("TENANT_WEIGHTS"))
    return {
        "api_keys": api_keys,
        "tenant_keys": tenant_keys,
        "tenant_weights": tuple(weights.items()),
        "tenant_max_waiting": access.parse_tenant_max_waiting(r.str("TENANT_MAX_WAITING")),
        "allow_open_bind": allow_open,
    }


def _outgoing(r: env.Reader) -> dict[str, Any]:
    """Webhooks and the outgoing-URL policy (callbacks, image URLs)."""
    secret = r.str("WEBHOOK_SECRET")
    if secret is not None:
        from comfy_fleet.delivery import webhooks

        webhooks.parse_secret(secret)  # ConfigError naming WEBHOOK_SECRET, never echoing it
    from comfy_fleet.policies.url_policy import UrlPolicy

    # Malformed entries stop the start with a line naming the variable.
    UrlPolicy.build(
        deny_hosts=r.list("URL_DENY_HOSTS"), deny_cidrs=r.list("URL_DENY_CIDRS"),
        allow_cidrs=r.list("URL_ALLOW_CIDRS"),
    )
    return {
        "webhook_secret": secret,
        "webhook_max_attempts": r.int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1),
        "webhook_timeout_s": r.float("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1),
        "webhook_max_delay_s": r.float("WEBHOOK_MAX_DELAY_S", 300.0, minimum=0.0),
        "webhook_max_in_flight": r.int("WEBHOOK_MAX_IN_FLIGHT", 256, minimum=1),
        "webhook_max_per_receiver": r.int("WEBHOOK_MAX_PER_RECEIVER", 64, minimum=1),
        "url_deny_hosts": tuple(r.list("URL_DENY_HOSTS")),
        "url_deny_cidrs": tuple(r.list("URL_DENY_CIDRS")),
        "url_allow_cidrs": tuple(r.list("URL_ALLOW_CIDRS")),
        "url_deny_private": r.bool("URL_DENY_PRIVATE", False),
    }


def _fleet(r: env.Reader) -> dict[str, Any]:
    """Ray, discovery and how tasks go to the endpoints."""
    return {
        "ray_address": r.str("RAY_ADDRESS"),
        "comfyui_discovery": r.bool("COMFYUI_DISCOVERY", False),
        "comfyui_discovery_port": r.int("COMFYUI_DISCOVERY_PORT", 8188, minimum=1, maximum=65535),
        "endpoint_queue_depth": r.int("ENDPOINT_QUEUE_DEPTH", 2, minimum=1),
        "max_waiting_tasks": r.int("MAX_WAITING_TASKS", 10_000, minimum=1),
        "task_max_attempts": r.int("TASK_MAX_ATTEMPTS", 3, minimum=1),
        "endpoint_lost_after_s": r.float("ENDPOINT_LOST_AFTER_S", 30.0, minimum=1.0),
        "node_info_refresh_s": r.float("NODE_INFO_REFRESH_S", 60.0, minimum=0.0),
        "fold_snapshot_s": r.float("FOLD_SNAPSHOT_S", 900.0, minimum=0.0),
    }


def _limits(r: env.Reader) -> dict[str, Any]:
    """Bounds on what a request may carry."""
    return {
        "presign_expiry_s": r.int("PRESIGN_EXPIRY_S", 3600, minimum=1, maximum=604800),
        "max_body_bytes": r.int("MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024),
        "max_string_length": r.int("MAX_STRING_LENGTH", 10_000, minimum=1),
        "max_image_bytes": r.int("MAX_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
        "max_image_pixels": r.int("MAX_IMAGE_PIXELS", 40_000_000, minimum=1),
        "input_fetch_timeout_s": r.float("INPUT_FETCH_TIMEOUT_S", 20.0, minimum=0.1),
        "max_model_bytes": r.int("MAX_MODEL_BYTES", 32 * 1024**3, minimum=1),
        "model_cache_bytes": r.int("MODEL_CACHE_BYTES", 50 * 1024**3, minimum=1),
        "model_fetch_timeout_s": r.float("MODEL_FETCH_TIMEOUT_S", 3600.0, minimum=0.1),
    }
