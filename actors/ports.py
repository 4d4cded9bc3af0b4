"""The one protocol of each actor: what the others may ask of it, written once.

Each worker class implements its protocol (`Router`, `EndpointWorker`, `WebhookDispatcher`);
`actors/remote.py` builds the Ray actor shell from the protocol (each method forwards to the
worker) and calls a named actor through the same protocol (`remote.port`). Callers are typed on
the protocol, so a test hands them the worker itself, or a fake, and no Ray.

Every method is safe to call again: the workers decide from the log with optimistic concurrency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

#: The result of dispatching one task (`EndpointApi.dispatch_many`): it runs there; it is not
#: ours to run (ended, cancelled, taken); or try it elsewhere or later.
ACCEPTED, REFUSED, RETRY = "accepted", "refused", "retry"


class EndpointApi(Protocol):
    """An endpoint actor (one per ComfyUI), as the router calls it."""

    async def dispatch_many(
        self, task_ids: list[str], states: list[dict[str, Any] | None] | None = None
    ) -> list[str]:
        """Record `task.dispatched` and post each prompt; one result per task (ACCEPTED,
        REFUSED or RETRY)."""
        ...

    async def status(self) -> dict[str, Any]:
        """What GET /endpoints shows of it; also the router's heartbeat (starts it)."""
        ...

    async def cancel(self, task_id: str) -> str: ...

    async def reload_workflows(self) -> list[str] | None:
        """Re-read the workflows; the ones it can run (None: not known yet)."""
        ...

    async def node_catalog(self) -> dict[str, Any] | None:
        """`{"digest", "object_info"}`: the node classes and input types it reports (its
        ComfyUI's /object_info, `raw_graph.normalised`; its loaders' choices list the model
        files it holds); None until known."""
        ...

    async def preview(
        self, task_id: str, after_version: int, timeout_s: float
    ) -> dict[str, Any] | None:
        """From the ingress (a stream with previews): the running task's latest preview,
        `{"version", "content_type", "data": bytes}`, once its version is not `after_version`
        (0 at first); None after `timeout_s` without one, when its prompt ends, or at once
        when the task is not in flight there."""
        ...


class RouterApi(Protocol):
    """The router actor: calls from the ingress and from the endpoints."""

    # --- from the ingress -------------------------------------------------------------------
    async def cancel(self, task_id: str) -> str: ...
    async def stats(self) -> dict[str, Any]: ...
    async def endpoint_statuses(self) -> list[dict[str, Any]]: ...
    async def reload_workflows(self) -> dict[str, Any]: ...
    async def add_endpoint(self, endpoint: str, labels: list[str]) -> dict[str, Any]: ...
    async def remove_endpoint(self, endpoint: str) -> dict[str, Any]: ...
    async def queue_info(
        self, task_ids: list[str], running: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """`{task_id: {"position", "eta_s"}}` (CONTRACT §7.6) for the tasks it holds, waiting
        or handed to an endpoint; `running` are those the caller knows run (position 0). A task
        it does not hold is left out."""
        ...

    async def node_catalog(self, digest: str) -> dict[str, Any] | None:
        """The normalised /object_info of the endpoints reporting `digest` (raw graphs are
        checked against it), or None when none does now."""
        ...

    # --- from the endpoints -----------------------------------------------------------------
    # A slot becomes free by the log's notices alone (a task's end, a requeue), never by a call.
    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None: ...

    async def dispatch_feed(
        self, name: str
    ) -> AsyncIterator[list[tuple[str, dict[str, Any] | None]]]:
        """A stream, held open by endpoint `name` for its life: the tasks handed to it, in
        batches of `(task_id, state or None)`, as `EndpointApi.dispatch_many` takes them. It
        ends when a newer one opens or the router gives up on it (then the endpoint opens
        another); until one is open the router calls `dispatch_many` (actors/router_streams.py)."""
        yield []  # (this body only makes it a stream)

    async def dispatch_results(self, name: str, task_ids: list[str], results: list[str]) -> None:
        """The answers other than ACCEPTED for tasks endpoint `name` took from its stream
        (ACCEPTED is not answered there)."""
        ...



class WebhookApi(Protocol):
    """The webhook dispatcher actor."""

    async def task_ended(self, task_id: str) -> None:
        """Deliver this task's webhook if it is pending (a redelivery asked for by id)."""
        ...

    async def tasks_ended(self, task_ids: list[str]) -> None: ...
    async def fleet_add(self, endpoint: str) -> None:
        """An endpoint joins the fleet: callbacks to any address of it are denied now."""
        ...

    async def stats(self) -> dict[str, Any]: ...
