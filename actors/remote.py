"""The only Ray declarations: actor names, namespace, restart policy, the shells and the ports.

Each actor has one protocol (`actors/ports.py`). Its shell is made from it
(`actors/ray_shells.py`): every method of the protocol forwards to the plain async worker, which
the shell builds lazily on its first call (Ray actors' constructors are synchronous; the worker
needs an asyncpg pool and an S3 client) with the actor's one factory of dependencies
(`build_endpoint`, `build_router`, `build_webhooks`), so a restarted actor rebuilds itself from
the log on the first call that reaches it. The router's heartbeat calls every endpoint each
second, which is also what brings a restarted endpoint back to work. Callers reach an actor
through `port(name, protocol)`. Methods are at-most-once (no task retries): every method is safe
to call again because the workers decide from the log with optimistic concurrency.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors import ports
from actors.ray_shells import NAMESPACE, port, shell
from comfy_fleet.config import Endpoint, Settings, parse_endpoint
from comfy_fleet.delivery import webhooks
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.net import fleet_refresher
from comfy_fleet.policies import fleet_addresses
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet import storage

ROUTER_NAME = "router"
WEBHOOKS_NAME = "webhooks"
ENDPOINT_PREFIX = "endpoint:"
#: The router and the webhook dispatcher live on the head node (with the ingress), never on a
#: GPU host that may leave; Ray gives the head this resource.
HEAD_ONLY = {"node:__internal_head__": 0.001}

log = logging.getLogger("comfy_fleet.remote")


def endpoint_actor_name(endpoint: str) -> str:
    return ENDPOINT_PREFIX + endpoint


# --- dependencies: the one place each is set up ---------------------------------------------


async def connect_log(settings: Settings, *, max_size: int = 4) -> PostgresEventLog:
    """The event log of the actors and the ingress (each its own pool of `max_size`)."""
    return await PostgresEventLog.connect(settings.database_url or "", max_size=max_size)


async def make_store(settings: Settings) -> storage.S3BlobStore:
    return await storage.S3BlobStore.from_settings(settings)


def router_port() -> ports.RouterApi:
    return port(ROUTER_NAME, ports.RouterApi)


def webhooks_port() -> ports.WebhookApi:
    # A task end's notice is fire and forget: the log's notice and the outbox scan cover a lost call.
    return port(WEBHOOKS_NAME, ports.WebhookApi, fire_and_forget=frozenset({"task_ended", "tasks_ended"}))


def endpoint_port(name: str) -> ports.EndpointApi:
    return port(endpoint_actor_name(name), ports.EndpointApi)


# --- the actors' dependencies, and the actors ---------------------------------------------------


async def build_endpoint(settings: Settings, endpoint: str, labels: list[str]) -> Any:
    """The endpoint worker of one ComfyUI and its dependencies, started."""
    from actors.endpoint import EndpointWorker

    parsed: Endpoint = parse_endpoint(endpoint)
    worker = EndpointWorker(
        parsed,
        settings=settings,
        log=await connect_log(settings),
        store=await make_store(settings),
        router=router_port(),
        labels=labels,
    )
    await worker.start()
    return worker


async def build_router(settings: Settings, endpoints: list[tuple[str, list[str]]]) -> Any:
    """The router and its dependencies, started (it rebuilds its queue from the log)."""
    from actors.autoscaler import Autoscaler
    from actors.fold_snapshots import FoldSnapshots, ray_refresh
    from actors.router import Router

    async def factory(name: str, labels: list[str]) -> ports.EndpointApi:
        # Every endpoint (configured, discovered, added) joins the webhooks' URL policy before
        # it can run a task whose callback could point at it. Each step waits for Ray's GCS (a
        # lookup, the node list, the actor's creation): in a thread, not on the router's loop.
        await asyncio.to_thread(tell_webhooks_fleet_add, name)
        return await asyncio.to_thread(start_endpoint_actor, settings, name, labels)

    # AUTOSCALE: a loop beside the router asks Ray's autoscaler for hosts and hides the
    # endpoints it lets go from discovery (actors/autoscaler.py).
    scaler = Autoscaler(settings) if settings.autoscale else None

    async def discover() -> dict[str, list[str]]:
        # `ray.nodes()` asks the GCS and waits for its answer: not on the router's event loop.
        found = await asyncio.to_thread(discover_endpoints, settings)
        return scaler.visible(found) if scaler is not None else found

    router = Router(
        settings=settings,
        log=await connect_log(settings),
        factory=factory,
        destroy=stop_endpoint_actor,
        configured={name: list(labels) for name, labels in endpoints},
        discover=discover if settings.comfyui_discovery else None,
    )
    await router.start()
    if scaler is not None:
        scaler.start(router)
    # FOLD_SNAPSHOT_S: a loop beside the router keeps `make rebuild`'s starting point fresh.
    if settings.database_url:
        router.fold_snapshots = FoldSnapshots(
            settings.fold_snapshot_s, ray_refresh(settings.database_url)
        )
        router.fold_snapshots.start()
    return router


async def build_webhooks(settings: Settings, extra_deny_hosts: list[str]) -> Any:
    """The webhook dispatcher and its dependencies, started."""
    from actors.webhook_dispatcher import WebhookDispatcher
    from comfy_fleet import legacy_record, views

    s = settings
    store = await make_store(s)
    # One fleet, kept current from the router's endpoint list (and fleet_add).
    fleet = fleet_addresses.for_settings(s)
    policy = UrlPolicy.from_settings(s, extra_deny_hosts=extra_deny_hosts, fleet=fleet)

    async def body(state: Any) -> dict[str, Any]:
        if state.origin == "legacy":
            return await legacy_record.webhook_body(state, store, s.presign_expiry_s)
        return await views.webhook_body(state, store, s.presign_expiry_s)

    dispatcher = WebhookDispatcher(
        log=await connect_log(s),
        sender=webhooks.WebhookSender(policy, timeout_s=s.webhook_timeout_s),
        policy=webhooks.RetryPolicy(
            max_attempts=s.webhook_max_attempts, max_delay_s=s.webhook_max_delay_s,
            base_delay_s=min(1.0, s.webhook_max_delay_s),
        ),
        secret=s.webhook_secret,
        body_builder=body,
        max_in_flight=s.webhook_max_in_flight,
        max_per_receiver=s.webhook_max_per_receiver,
        fleet=fleet,
        fleet_refresher=fleet_refresher.FleetRefresher(fleet, router_endpoint_names),
    )
    await dispatcher.start()
    return dispatcher


async def router_endpoint_names() -> list[str]:
    """The endpoints the router knows (configured, discovered, added; draining ones too)."""
    return fleet_refresher.endpoint_names(await router_port().stats())


def tell_webhooks_fleet_add(endpoint: str) -> None:
    """Fire and forget: the webhook actor denies `endpoint` before it gets its first task
    (its refresher would learn of it within a second anyway)."""
    try:
        ray.get_actor(WEBHOOKS_NAME, namespace=NAMESPACE).fleet_add.remote(endpoint)
    except Exception:  # not started yet: it reads the router's list when it starts
        log.debug("webhooks not told of %s", endpoint, exc_info=True)


def _node_id(self: Any) -> str:
    """The Ray node this actor runs on (placement checks, the dashboard)."""
    return ray.get_runtime_context().get_node_id()


# `enable_task_events=False`, as Ray Serve does for its replicas: every method call would
# otherwise be buffered and reported to the GCS as a task for the dashboard's task list (a
# dispatch per task, thousands a minute). The actor list, logs and metrics are unaffected.
_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0, "max_restarts": -1, "max_concurrency": 10_000, "enable_task_events": False,
}

#: One per ComfyUI server, named `endpoint:<host:port>`; args (settings, endpoint, labels).
EndpointActor = ray.remote(**_ACTOR_OPTIONS)(shell(
    "EndpointActor", ports.EndpointApi, build_endpoint, eager=False,
    doc="One per ComfyUI server, named `endpoint:<host:port>`.", extra={"node_id": _node_id},
))
#: The one router, named `router`; args (settings, [(endpoint, labels)]).
RouterActor = ray.remote(**_ACTOR_OPTIONS)(shell(
    "RouterActor", ports.RouterApi, build_router, eager=True, doc="The one router, named `router`.",
))
#: The webhook dispatcher, named `webhooks`; args (settings, extra_deny_hosts).
WebhookActor = ray.remote(**_ACTOR_OPTIONS)(shell(
    "WebhookActor", ports.WebhookApi, build_webhooks, eager=True,
    doc="The webhook dispatcher, named `webhooks`.",
))


def start_endpoint_actor(settings: Settings, name: str, labels: list[str]) -> ports.EndpointApi:
    """Create (or find) the endpoint actor of one ComfyUI, on that ComfyUI's node when a node
    matches (comfy_fleet.policies.placement), anywhere otherwise. Waits for Ray's GCS: from
    an event loop, call it in a thread."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from comfy_fleet.policies import placement

    options: dict[str, Any] = {
        "name": endpoint_actor_name(name), "namespace": NAMESPACE, "get_if_exists": True,
        "lifetime": "detached",
    }
    node_id = placement.node_for(name, ray.nodes())
    if node_id is not None:
        # Soft: if that node is gone the actor still runs (and finds its ComfyUI lost). Ray
        # ignores a soft affinity for an actor that asks for no resources
        # (ray-project/ray#25360), hence a token CPU share: 100 endpoints per CPU.
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        options["num_cpus"] = 0.01
    EndpointActor.options(**options).remote(settings, name, labels)  # type: ignore[attr-defined]
    return endpoint_port(name)


async def stop_endpoint_actor(name: str) -> None:
    # The lookup and the kill wait for Ray's GCS: in a thread, not on the router's event loop.
    actor_name = endpoint_actor_name(name)
    try:
        actor = await asyncio.to_thread(ray.get_actor, actor_name, namespace=NAMESPACE)
    except ValueError:
        return
    await asyncio.to_thread(ray.kill, actor, no_restart=True)


def discover_endpoints(settings: Settings) -> dict[str, list[str]]:
    from comfy_fleet.policies import placement

    found = placement.discovered_endpoints(ray.nodes(), settings.comfyui_discovery_port)
    return {name: [] for name in found}


def deploy_fleet(settings: Settings, extra_deny_hosts: list[str] | None = None) -> dict[str, Any]:
    """Create (or find) the named actors of the fleet: the router (which starts one endpoint
    actor per ComfyUI) and the webhook dispatcher. Returns their handles."""
    handles: dict[str, Any] = {}
    endpoints = [(e.name, []) for e in settings.comfyui_endpoints]
    handles[WEBHOOKS_NAME] = WebhookActor.options(  # type: ignore[attr-defined]
        name=WEBHOOKS_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        resources=HEAD_ONLY,
    ).remote(settings, list(extra_deny_hosts or []))
    handles[ROUTER_NAME] = RouterActor.options(  # type: ignore[attr-defined]
        name=ROUTER_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        resources=HEAD_ONLY,
    ).remote(settings, endpoints)
    # Wake them: each builds itself and rebuilds from the log.
    ray.get([handles[ROUTER_NAME].stats.remote(), handles[WEBHOOKS_NAME].stats.remote()])
    return handles


def shutdown_fleet(settings: Settings) -> None:
    """Kill every named actor of the fleet (the configured endpoints and any added later)."""
    names = {ROUTER_NAME, WEBHOOKS_NAME, *(endpoint_actor_name(e.name) for e in settings.comfyui_endpoints)}
    names |= {
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE and str(a.get("name", "")).startswith(ENDPOINT_PREFIX)
    }
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
