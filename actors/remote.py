"""The only Ray declarations: actor names, namespace, restart policy, and thin shells.

Each shell builds its plain async worker lazily on its first call (Ray actors' constructors are
synchronous; the worker needs an asyncpg pool and an S3 client), so a restarted actor rebuilds
itself from the log on the first call that reaches it. The router's heartbeat calls every
endpoint each second, which is also what brings a restarted endpoint back to work.
Methods are at-most-once (no task retries): every method is safe to call again because the
workers decide from the log with optimistic concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from comfy_fleet import storage

from comfy_fleet.delivery import webhooks
from comfy_fleet.config import Endpoint, Settings, parse_endpoint
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.net import fleet_refresher
from comfy_fleet.policies import fleet_addresses
from comfy_fleet.policies.url_policy import UrlPolicy

NAMESPACE = "comfy-fleet"
ROUTER_NAME = "router"
WEBHOOKS_NAME = "webhooks"
ENDPOINT_PREFIX = "endpoint:"
#: The router and the webhook dispatcher live on the head node (with the ingress), never on a
#: GPU host that may leave; Ray gives the head this resource.
HEAD_ONLY = {"node:__internal_head__": 0.001}

log = logging.getLogger("comfy_fleet.remote")


def endpoint_actor_name(endpoint: str) -> str:
    return ENDPOINT_PREFIX + endpoint


async def make_store(settings: Settings) -> storage.S3BlobStore:
    return await storage.S3BlobStore.from_settings(settings)


class _Lazy:
    """Builds the worker once, on first use, under a lock."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._lock = asyncio.Lock()
        self._boot: asyncio.Task[None] | None = None

    async def _build(self) -> Any:
        raise NotImplementedError

    async def inner(self) -> Any:
        if self._inner is None:
            async with self._lock:
                if self._inner is None:
                    self._inner = await self._build()
        return self._inner

    def build_soon(self) -> None:
        """Build now, not on the first call (from an `async def __init__`, on the actor's
        loop). For actors whose work comes from the log's notifications rather than from
        calls: restarted by Ray after a crash, they must start themselves."""
        self._boot = asyncio.get_running_loop().create_task(self._build_until_built())

    async def _build_until_built(self) -> None:
        delay = 0.5
        while self._inner is None:
            try:
                await self.inner()
            except Exception:
                log.warning("%s: start failed; retrying in %.1f s", type(self).__name__, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


# --- ports over actor handles ---------------------------------------------------------------


class RouterPortOverRay:
    def __init__(self) -> None:
        self._h: Any = None

    def _handle(self) -> Any:
        if self._h is None:
            self._h = ray.get_actor(ROUTER_NAME, namespace=NAMESPACE)
        return self._h

    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None:
        await self._handle().endpoint_status.remote(name, status)

    async def task_finished_many(self, name: str, task_ids: list[str]) -> None:
        await self._handle().task_finished_many.remote(name, task_ids)

    async def task_requeued(self, task_id: str, priority: int, created_at: float) -> None:
        await self._handle().task_requeued.remote(task_id, priority, created_at)


class WebhookPortOverRay:
    def __init__(self) -> None:
        self._h: Any = None

    def _handle(self) -> Any:
        if self._h is None:
            self._h = ray.get_actor(WEBHOOKS_NAME, namespace=NAMESPACE)
        return self._h

    async def task_ended(self, task_id: str) -> None:
        # Fire and forget: the log's notice and the outbox scan cover a lost call.
        self._handle().tasks_ended.remote([task_id])

    async def fleet_add(self, endpoint: str) -> None:
        await self._handle().fleet_add.remote(endpoint)


async def router_endpoint_names() -> list[str]:
    """The endpoints the router knows (configured, discovered, added; draining ones too)."""
    stats = await ray.get_actor(ROUTER_NAME, namespace=NAMESPACE).stats.remote()
    return fleet_refresher.endpoint_names(stats)


def tell_webhooks_fleet_add(endpoint: str) -> None:
    """Fire and forget: the webhook actor denies ``endpoint`` before it gets its first task
    (its refresher would learn it within a second anyway)."""
    with contextlib.suppress(Exception):
        ray.get_actor(WEBHOOKS_NAME, namespace=NAMESPACE).fleet_add.remote(endpoint)


class EndpointHandleOverRay:
    def __init__(self, name: str) -> None:
        self.name = name
        self._h: Any = None

    def _handle(self) -> Any:
        if self._h is None:
            self._h = ray.get_actor(endpoint_actor_name(self.name), namespace=NAMESPACE)
        return self._h

    async def dispatch_many(self, task_ids: list[str]) -> list[str]:
        return await self._handle().dispatch_many.remote(task_ids)  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await self._handle().status.remote()  # type: ignore[no-any-return]

    async def cancel(self, task_id: str) -> str:
        return await self._handle().cancel.remote(task_id)  # type: ignore[no-any-return]

    async def reload_workflows(self) -> list[str] | None:
        return await self._handle().reload_workflows.remote()  # type: ignore[no-any-return]


# --- the actors -----------------------------------------------------------------------------
# `enable_task_events=False`, as Ray Serve does for its replicas: every method call would
# otherwise be buffered and reported to the GCS as a task for the dashboard's task list (a
# dispatch per task, thousands a minute). The actor list, logs and metrics are unaffected.


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000, enable_task_events=False)
class EndpointActor(_Lazy):
    """One per ComfyUI server, named `endpoint:<host:port>`."""

    def __init__(self, settings: Settings, endpoint: str, labels: list[str]) -> None:
        super().__init__()
        self.settings = settings
        self.endpoint: Endpoint = parse_endpoint(endpoint)
        self.labels = labels

    async def _build(self) -> Any:
        from actors.endpoint import EndpointWorker

        worker = EndpointWorker(
            self.endpoint,
            settings=self.settings,
            log=await PostgresEventLog.connect(self.settings.database_url or "", max_size=4),
            store=await make_store(self.settings),
            router=RouterPortOverRay(),
            labels=self.labels,
        )
        await worker.start()
        return worker

    async def dispatch_many(self, task_ids: list[str]) -> list[str]:
        return await (await self.inner()).dispatch_many(task_ids)  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await (await self.inner()).status()  # type: ignore[no-any-return]

    async def cancel(self, task_id: str) -> str:
        return await (await self.inner()).cancel(task_id)  # type: ignore[no-any-return]

    async def reload_workflows(self) -> list[str] | None:
        return await (await self.inner()).reload_workflows()  # type: ignore[no-any-return]

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks, the dashboard)."""
        return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000, enable_task_events=False)
class RouterActor(_Lazy):
    """The one router, named `router`."""

    async def __init__(self, settings: Settings, endpoints: list[tuple[str, list[str]]]) -> None:
        super().__init__()
        self.settings = settings
        self.endpoints = endpoints
        self.build_soon()  # its work arrives as the log's notifications, not only as calls

    async def _build(self) -> Any:
        from actors.router import Router

        settings = self.settings

        def factory(name: str, labels: list[str]) -> EndpointHandleOverRay:
            # Every endpoint (configured, discovered, added) joins the webhooks' URL policy
            # before it can run a task whose callback could point at it.
            tell_webhooks_fleet_add(name)
            return start_endpoint_actor(settings, name, labels)

        router = Router(
            settings=settings,
            log=await PostgresEventLog.connect(settings.database_url or "", max_size=4),
            factory=factory,
            destroy=stop_endpoint_actor,
            configured={name: list(labels) for name, labels in self.endpoints},
            discover=(lambda: discover_endpoints(settings)) if settings.comfyui_discovery else None,
        )
        await router.start()
        return router

    async def add_endpoint(self, endpoint: str, labels: list[str]) -> dict[str, Any]:
        return await (await self.inner()).add_endpoint(endpoint, labels)  # type: ignore[no-any-return]

    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]:
        return await (await self.inner()).remove_endpoint(endpoint)  # type: ignore[no-any-return]

    async def submit(self, task_id: str, priority: int, created_at: float, workflow: str, labels: list[str]) -> int:
        return await (await self.inner()).submit(task_id, priority, created_at, workflow, labels)  # type: ignore[no-any-return]

    async def cancel(self, task_id: str) -> str:
        return await (await self.inner()).cancel(task_id)  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        return await (await self.inner()).stats()  # type: ignore[no-any-return]

    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None:
        await (await self.inner()).endpoint_status(name, status)

    async def task_finished_many(self, name: str, task_ids: list[str]) -> None:
        await (await self.inner()).task_finished_many(name, task_ids)

    async def task_requeued(self, task_id: str, priority: int, created_at: float) -> None:
        await (await self.inner()).task_requeued(task_id, priority, created_at)

    async def reload_workflows(self) -> dict[str, Any]:
        return await (await self.inner()).reload_workflows()  # type: ignore[no-any-return]

    async def endpoint_statuses(self) -> list[dict[str, Any]]:
        router = await self.inner()
        names = list(router.handles)
        results = await asyncio.gather(
            *(asyncio.wait_for(router.handles[n].status(), 5) for n in names), return_exceptions=True
        )
        out = []
        for name, res in zip(names, results, strict=True):
            load = router.loads.get(name)
            if isinstance(res, BaseException):
                res = {"endpoint": name, "state": "disconnected", "connected": False,
                       "queue_remaining": 0, "inflight": 0, "last_seen": None}
            if load is not None:
                res["labels"] = sorted(load.labels)
                if load.draining:
                    res["state"] = "draining"
            out.append(res)
        return out


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000, enable_task_events=False)
class WebhookActor(_Lazy):
    """The webhook dispatcher, named `webhooks`."""

    async def __init__(self, settings: Settings, extra_deny_hosts: list[str]) -> None:
        super().__init__()
        self.settings = settings
        self.extra_deny_hosts = extra_deny_hosts
        self.build_soon()  # its work arrives as the log's notifications, not only as calls

    async def _build(self) -> Any:
        from actors.webhook_dispatcher import WebhookDispatcher
        from comfy_fleet import views

        s = self.settings
        store = await make_store(s)
        # One fleet, kept current from the router's endpoint list (and fleet_add).
        self.fleet = fleet_addresses.for_settings(s)
        policy = UrlPolicy.from_settings(s, extra_deny_hosts=self.extra_deny_hosts, fleet=self.fleet)
        self.refresher = fleet_refresher.FleetRefresher(self.fleet, router_endpoint_names)
        await self.refresher.refresh()
        self.refresher.start()

        async def body(state: Any) -> dict[str, Any]:
            if state.origin == "legacy":
                from serve_app import legacy

                return await legacy.webhook_body(state, store, s.presign_expiry_s)
            return await views.webhook_body(state, store, s.presign_expiry_s)

        dispatcher = WebhookDispatcher(
            log=await PostgresEventLog.connect(s.database_url or "", max_size=4),
            sender=webhooks.WebhookSender(policy, timeout_s=s.webhook_timeout_s),
            policy=webhooks.RetryPolicy(
                max_attempts=s.webhook_max_attempts, max_delay_s=s.webhook_max_delay_s,
                base_delay_s=min(1.0, s.webhook_max_delay_s),
            ),
            secret=s.webhook_secret,
            body_builder=body,
            max_in_flight=s.webhook_max_in_flight,
            max_per_receiver=s.webhook_max_per_receiver,
        )
        await dispatcher.start()
        return dispatcher

    async def tasks_ended(self, task_ids: list[str]) -> None:
        await (await self.inner()).tasks_ended(task_ids)

    async def fleet_add(self, endpoint: str) -> None:
        """An endpoint joins the fleet: deny it to webhooks now."""
        await self.inner()
        with contextlib.suppress(ValueError):
            self.fleet.add(endpoint)

    async def stats(self) -> dict[str, Any]:
        return await (await self.inner()).stats()  # type: ignore[no-any-return]


def start_endpoint_actor(settings: Settings, name: str, labels: list[str]) -> EndpointHandleOverRay:
    """Create (or find) the endpoint actor of one ComfyUI, on that ComfyUI's node when a node
    matches (comfy_fleet.policies.placement), anywhere otherwise."""
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
    return EndpointHandleOverRay(name)


async def stop_endpoint_actor(name: str) -> None:
    try:
        ray.kill(ray.get_actor(endpoint_actor_name(name), namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass


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
