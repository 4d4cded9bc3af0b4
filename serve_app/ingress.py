"""The Ray Serve ingress deployment: one FastAPI app per replica, built at replica start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray
from ray import serve

from actors import remote
from comfy_fleet import errors
from comfy_fleet.config import Settings
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.net import fleet_refresher
from comfy_fleet.policies import fleet_addresses
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app import api
from serve_app.services import Services

log = logging.getLogger("comfy_fleet.ingress")

#: How often each replica refreshes the router's waiting count (admission control).
WAITING_REFRESH_S = 1.0


class RouterClientOverRay:
    """The ingress's view of the router actor (and, through it, of the endpoints)."""

    def __init__(self) -> None:
        self._h: Any = None
        self._waiting = 0
        self._refresher: asyncio.Task[None] | None = None

    def _handle(self) -> Any:
        if self._h is None:
            self._h = ray.get_actor(remote.ROUTER_NAME, namespace=remote.NAMESPACE)
        return self._h

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self._waiting = (await self.stats())["waiting"]
            await asyncio.sleep(WAITING_REFRESH_S)

    async def submit(self, task_id: str, priority: int, created_at: float, workflow: str, labels: list[str]) -> int:
        """Nothing to send: the router follows new tasks from the log (LISTEN/NOTIFY, and a
        scan). A call per task from here would cost more than the rest of the request. This
        returns the router's waiting count as last seen (admission control)."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        self._waiting += 1
        return self._waiting

    async def cancel(self, task_id: str) -> str:
        return await self._handle().cancel.remote(task_id)  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        return await self._handle().stats.remote()  # type: ignore[no-any-return]

    async def endpoint_statuses(self) -> list[dict[str, Any]]:
        return await self._handle().endpoint_statuses.remote()  # type: ignore[no-any-return]

    async def reload_workflows(self) -> dict[str, Any]:
        return await self._handle().reload_workflows.remote()  # type: ignore[no-any-return]

    async def add_endpoint(self, endpoint: str, labels: list[str]) -> dict[str, Any]:
        return await self._handle().add_endpoint.remote(endpoint, labels)  # type: ignore[no-any-return]

    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle().remove_endpoint.remote(endpoint)
        if result.get("error") == "endpoint_not_found":
            raise errors.EndpointNotFound(f"no endpoint {endpoint!r}; GET /endpoints lists them")
        return result


async def build_services(settings: Settings, extra_deny_hosts: list[str]) -> Services:
    registry, problems = WorkflowRegistry.load(settings.workflows_dir)
    for problem in problems:
        log.error("workflow not served: %s", problem.message)
    router = RouterClientOverRay()
    # This replica's view of the fleet, for callbacks and image URLs: the router's endpoint
    # list re-read every second, and at once after POST/DELETE /endpoints here.
    fleet = fleet_addresses.for_settings(settings)

    async def endpoint_names() -> list[str]:
        return fleet_refresher.endpoint_names(await router.stats())

    refresher = fleet_refresher.FleetRefresher(fleet, endpoint_names)
    refresher.start()
    return Services(
        settings=settings,
        log=await PostgresEventLog.connect(settings.database_url or "", max_size=8),
        store=await remote.make_store(settings),
        registry=registry,
        router=router,
        webhooks=remote.WebhookPortOverRay(),
        url_policy=UrlPolicy.from_settings(settings, extra_deny_hosts=extra_deny_hosts, fleet=fleet),
        fleet_refresher=refresher,
    )


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """HTTP ingress. Stateless: any replica serves any request."""

    def __init__(self, settings: Settings, extra_deny_hosts: list[str]) -> None:
        self.settings = settings
        self.extra_deny_hosts = extra_deny_hosts

    def __serve_build_asgi_app__(self) -> Any:
        return api.create_app(
            self.settings, lambda: build_services(self.settings, self.extra_deny_hosts)
        )


def build_app(settings: Settings, extra_deny_hosts: list[str] | None = None) -> Any:
    """The Serve application (bind it with `serve.run(app, route_prefix="/")`)."""
    return Ingress.options(
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        # One access-log line per request costs more than our handler's own logging.
        logging_config={"enable_access_log": False, "encoding": "JSON"},
    ).bind(settings, list(extra_deny_hosts or []))
