"""Deploying the service on a running Ray: the database's migrations, the bucket, the fleet's
actors and the Serve application; and removing them again.

What a production deployment needs and nothing else: `serve_app.app` (for `serve run` /
`serve deploy` on a cluster) and the local demo fleet (`comfy_fleet_devstack.launch`) both
come through here, so both deploy the same way.
"""

from __future__ import annotations

import asyncio
import contextlib

from comfy_fleet import errors
from comfy_fleet.cli import migrate
from comfy_fleet.config import Settings

#: Ray Serve's throughput settings (the parts of RAY_SERVE_THROUGHPUT_OPTIMIZED that keep the
#: proxy), for every Ray process: user code on the replica's own loop, buffered request logs,
#: the proxy's request router on its main loop, proxy-to-replica over gRPC. Each cuts a thread
#: hop or a write per request; see docs/performance.md. deploy/ray-node.env carries the same.
SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}


def migrate_database(settings: Settings) -> list[str]:
    """Apply the migrations not yet applied; returns their names."""
    if not settings.database_url:
        raise errors.ConfigError("DATABASE_URL: no database configured")
    return asyncio.run(migrate.apply_dsn(settings.database_url))


def ensure_bucket(settings: Settings) -> None:
    """Create the outputs bucket if it does not exist (idempotent)."""
    from actors.remote import make_store

    async def run() -> None:
        store = await make_store(settings)
        try:
            await store.ensure_bucket()
        finally:
            await store.close()

    asyncio.run(run())


def start_service(settings: Settings, extra_deny_hosts: list[str] | None = None) -> str:
    """Deploy the actors and the Serve app on the running Ray; returns the API's base URL."""
    from ray import serve

    from actors import remote
    from serve_app.ingress import build_app

    # Webhooks and image URLs may never target a ComfyUI host.
    deny = list(extra_deny_hosts or []) + [e.name for e in settings.comfyui_endpoints]
    remote.deploy_fleet(settings, deny)
    serve.start(http_options={"host": settings.service_host, "port": settings.service_port})
    serve.run(build_app(settings, deny), name="comfy-fleet", route_prefix="/")
    return f"http://{settings.service_host}:{settings.service_port}{settings.route_prefix}"


def remove_service(settings: Settings) -> None:
    """Remove the Serve app and the fleet's detached actors from the running Ray (a cluster
    keeps running without them). Errors are swallowed: this runs while stopping."""
    from ray import serve

    from actors import remote

    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        remote.shutdown_fleet(settings)
