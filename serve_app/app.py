"""The Serve application builder for `serve run serve_config.yaml` and `serve deploy`.

`import_path: serve_app.app:app` in serve_config.yaml. Serve calls `app(args)` in a task on the
cluster, on any node: the settings are that node's environment (ray_cluster.yaml sources the
secrets file before `ray start`) overlaid with the config's `args`. `make run` does not come
through here: it starts a local Ray (comfy_fleet_devstack.launch) and deploys through the same
`serve_app.deploy`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from comfy_fleet import errors
from comfy_fleet.config import Settings

log = logging.getLogger("comfy_fleet.app")


def settings_from_args(args: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """`environ` overlaid with `args` (values made strings: YAML gives ints and booleans).
    A bad or unknown-to-Settings value fails as `Settings.from_env` does (ConfigError)."""
    merged = dict(environ)
    merged.update({key: _as_text(value) for key, value in args.items()})
    return Settings.from_env(merged)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


def require_token_auth(environ: Mapping[str, str]) -> None:
    """A cluster runs with Ray's token authentication: every Serve replica opens a gRPC server
    on all of its node's addresses, and Ray's token is the only check before its handler
    unpickles what it is sent. ConfigError unless RAY_AUTH_MODE=token (deploy/ray-node.env)."""
    mode = environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        raise errors.ConfigError(
            f"RAY_AUTH_MODE={mode or '(unset)'}: comfy-fleet on a cluster needs Ray's token "
            "authentication (RAY_AUTH_MODE=token on every node, see deploy/ray-node.env)"
        )


def app(args: dict[str, str]) -> Any:
    """Migrate the database, make sure the bucket exists, create (or find) the fleet's detached
    actors, and return the ingress application. Safe to run again: migrations are recorded,
    the bucket check is idempotent and the actors are looked up by name (get_if_exists).
    Refuses (ConfigError) on a Ray without token authentication."""
    from actors import remote
    from serve_app import deploy
    from serve_app.ingress import build_app

    require_token_auth(os.environ)
    settings = settings_from_args(args, os.environ)
    applied = deploy.migrate_database(settings)
    log.info("database ready (%d migration(s) applied)", len(applied))
    deploy.ensure_bucket(settings)
    # As in deploy.start_service: webhooks may never target a ComfyUI host.
    deny = [e.name for e in settings.comfyui_endpoints]
    remote.deploy_fleet(settings, deny)
    return build_app(settings, deny)
