"""`make run`: start everything that is missing, then serve the API until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from comfy_fleet import errors
from comfy_fleet.config import REPO_ROOT, Settings
from serve_app import launcher


def say(message: str) -> None:
    print(f"comfy-fleet: {message}", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
    except errors.ConfigError as exc:
        sys.exit(f"comfy-fleet: configuration error: {exc}")
    from comfy_fleet.workflows.registry import WorkflowRegistry

    _, problems = WorkflowRegistry.load(settings.workflows_dir)
    if problems:
        sys.exit(f"comfy-fleet: configuration error: WORKFLOWS_DIR: {problems[0].message}")
    if not settings.api_keys and not settings.tenant_keys:
        say(f"API_KEYS is not set: serving on loopback only ({settings.service_host})")
    # DATA_DIR: where the parts started here keep their files (a test's or a bench's own).
    data_dir = Path(os.environ.get("DATA_DIR") or REPO_ROOT / "data").resolve()
    settings, parts = launcher.start_local_parts(settings, data_dir, say=say)
    try:
        applied = launcher.migrate_database(settings)
        say(f"database ready ({len(applied)} migration(s) applied)")
        launcher.ensure_bucket(settings)
        launcher.init_ray(settings, dashboard=True)
        url = launcher.start_service(settings)
        import ray

        dashboard = ray.get_runtime_context().dashboard_url if hasattr(ray.get_runtime_context(), "dashboard_url") else None
        say(f"API on {url} (docs: http://{settings.service_host}:{settings.service_port}/docs)")
        ctx = ray.worker.global_worker.node
        say(f"Ray dashboard on http://{getattr(ctx, 'address_info', {}).get('webui_url') or dashboard or '127.0.0.1:8265'}")
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        say("stopping")
    finally:
        launcher.stop_service(settings)
        parts.stop()


if __name__ == "__main__":
    main()
