"""The Ray Serve ingress deployment: one FastAPI app per replica, built at replica start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from ray import serve

from actors import ports, remote
from comfy_fleet import errors, process_heap
from comfy_fleet.config import Settings
from comfy_fleet.net import fleet_refresher
from comfy_fleet.policies import fleet_addresses
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.workflows.registry import WorkflowRegistry
from serve_app import api, submission
from serve_app.services import Services

log = logging.getLogger("comfy_fleet.ingress")

#: How often each replica refreshes the router's waiting count (admission control).
WAITING_REFRESH_S = 1.0


class RouterClientOverRay:
    """The ingress's view of the router actor (and, through it, of the endpoints): the router's
    protocol over Ray, with its "no such endpoint" answer as the API's error."""

    def __init__(self) -> None:
        self._router = remote.router_port()

    def __getattr__(self, method: str) -> Any:
        return getattr(self._router, method)

    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._router.remove_endpoint(endpoint)
        if result.get("error") == "endpoint_not_found":
            raise errors.EndpointNotFound(f"no endpoint {endpoint!r}; GET /endpoints lists them")
        return result


async def _refresh_waiting(services: Services) -> None:
    """Keep the replica's estimate of the router's waiting tasks fresh (admission control;
    between refreshes each submission counts itself in, serve_app/submission.py), and its
    view of the endpoints' node info (`Services.node_catalog`)."""
    while True:
        with contextlib.suppress(Exception):
            stats = await services.router.stats()
            submission.absorb_stats(services, stats)
            # The same answer says which node info each endpoint reports (raw graphs).
            services.node_catalog.observe(stats.get("endpoints") or {})
        await asyncio.sleep(WAITING_REFRESH_S)


async def build_services(settings: Settings, extra_deny_hosts: list[str]) -> Services:
    registry, problems = WorkflowRegistry.load(settings.workflows_dir)
    for problem in problems:
        log.error("workflow not served: %s", problem.message)
    router = cast(ports.RouterApi, RouterClientOverRay())
    # This replica's view of the fleet, for callbacks and image URLs: the router's endpoint
    # list re-read every second, and at once after POST/DELETE /endpoints here.
    fleet = fleet_addresses.for_settings(settings)

    async def endpoint_names() -> list[str]:
        return fleet_refresher.endpoint_names(await router.stats())

    refresher = fleet_refresher.FleetRefresher(fleet, endpoint_names)
    refresher.start()
    services = Services(
        settings=settings,
        log=await remote.connect_log(settings, max_size=8),
        store=await remote.make_store(settings),
        registry=registry,
        router=router,
        webhooks=remote.webhooks_port(),
        url_policy=UrlPolicy.from_settings(settings, extra_deny_hosts=extra_deny_hosts, fleet=fleet),
        fleet_refresher=refresher,
        endpoints=remote.endpoint_port,
    )
    services.background.add(asyncio.create_task(_refresh_waiting(services)))
    return services


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """HTTP ingress. Stateless: any replica serves any request."""

    def __init__(self, settings: Settings, extra_deny_hosts: list[str]) -> None:
        self.settings = settings
        self.extra_deny_hosts = extra_deny_hosts

    def __serve_build_asgi_app__(self) -> Any:
        return api.create_app(self.settings, self._start)

    async def _start(self) -> Services:
        services = await build_services(self.settings, self.extra_deny_hosts)
        process_heap.settle()  # the replica has started: what exists now lives for good
        return services


def build_app(settings: Settings, extra_deny_hosts: list[str] | None = None) -> Any:
    """The Serve application (bind it with `serve.run(app, route_prefix="/")`)."""
    return Ingress.options(
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        # One access-log line per request costs more than our handler's own logging.
        logging_config={"enable_access_log": False, "encoding": "JSON"},
    ).bind(settings, list(extra_deny_hosts or []))
