"""What the ingress talks to, as ports: the log, the store, the workflows, and the actors.

`Services` is built once per ingress replica. The actors are their protocols
(`actors/ports.py`), so the API can be exercised in-process (tests of bad input need no Ray);
`actors/remote.py` calls them over Ray.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from actors import ports
from comfy_fleet import storage
from comfy_fleet.config import Settings
from comfy_fleet.log.event_log import EventLog
from comfy_fleet.net.fleet_refresher import FleetRefresher
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.workflows.node_catalog import NodeCatalog
from comfy_fleet.workflows.registry import WorkflowRegistry


@dataclass
class Services:
    settings: Settings
    log: EventLog
    store: storage.BlobStore | None
    registry: WorkflowRegistry
    router: ports.RouterApi
    webhooks: ports.WebhookApi
    url_policy: UrlPolicy
    #: tasks waiting in the router as of the last answer from it (admission control)
    waiting_estimate: int = 0
    #: each tenant's tasks waiting in the router, likewise (TENANT_MAX_WAITING)
    tenant_waiting: dict[str, int] = field(default_factory=dict)
    #: keeps ``url_policy.fleet`` in step with the router's endpoints (None: a fixed fleet)
    fleet_refresher: FleetRefresher | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the fleet's node info for raw graphs (digests from the router's stats, kept fresh by
    #: serve_app/ingress.py)
    node_catalog: NodeCatalog = field(default_factory=NodeCatalog)
    #: an endpoint actor by name (a stream's previews); None: not reachable (no previews)
    endpoints: Callable[[str], ports.EndpointApi] | None = None
    #: the replica's own loops (the waiting estimate's refresh), cancelled by `close`
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        if self.fleet_refresher is not None:
            await self.fleet_refresher.stop()
        await self.log.close()
        if self.store is not None:
            await self.store.close()
