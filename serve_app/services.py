"""What the ingress talks to, as ports: the log, the store, the workflows, and the actors.

`Services` is built once per ingress replica. The actor ports are Protocols so the API can be
exercised in-process (tests of bad input need no Ray); `actors/remote.py` implements them
over Ray actor handles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from comfy_fleet import storage
from comfy_fleet.config import Settings
from comfy_fleet.log.event_log import EventLog
from comfy_fleet.net.fleet_refresher import FleetRefresher
from comfy_fleet.policies.url_policy import UrlPolicy
from comfy_fleet.workflows.registry import WorkflowRegistry


class RouterClient(Protocol):
    async def submit(
        self, task_id: str, priority: int, created_at: float, workflow: str, labels: list[str]
    ) -> int: ...
    async def cancel(self, task_id: str) -> str: ...
    async def stats(self) -> dict[str, Any]: ...
    async def endpoint_statuses(self) -> list[dict[str, Any]]: ...
    async def reload_workflows(self) -> dict[str, Any]: ...
    async def add_endpoint(self, endpoint: str, labels: list[str]) -> dict[str, Any]: ...
    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]: ...


class WebhookClient(Protocol):
    async def task_ended(self, task_id: str) -> None: ...
    async def fleet_add(self, endpoint: str) -> None: ...


@dataclass
class Services:
    settings: Settings
    log: EventLog
    store: storage.BlobStore | None
    registry: WorkflowRegistry
    router: RouterClient
    webhooks: WebhookClient
    url_policy: UrlPolicy
    #: tasks waiting in the router as of the last answer from it (admission control)
    waiting_estimate: int = 0
    #: keeps ``url_policy.fleet`` in step with the router's endpoints (None: a fixed fleet)
    fleet_refresher: FleetRefresher | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        if self.fleet_refresher is not None:
            await self.fleet_refresher.stop()
        await self.log.close()
        if self.store is not None:
            await self.store.close()
