"""The items of a POST /batches body: the request as the route parsed it, each task it makes
(a `tasks` list's bodies, or a sweep's product), and how an item's refusal names it.

A `tasks` item is a POST /tasks body, parsed by the same model (`schemas.SubmitTask`): a served
workflow's name with its params (and optionally a pinned `workflow_version`), or a raw `graph`
with its `files`. A refusal of an item is the error a single submission would raise, its
message prefixed with `tasks[<index>]: ` and `details.index` added (`at_index`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic

from comfy_fleet import errors
from comfy_fleet.batches import sweep
from comfy_fleet.workflows import raw_graph
from serve_app import schemas

T = TypeVar("T")


@dataclass(frozen=True)
class BatchRequest:
    """A POST /batches body, as the route parsed it (`tasks` items still raw)."""

    tenant: str
    tasks: list[Any] | None = None
    workflow: str | None = None
    params: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    client_batch_id: str | None = None
    callback_url: str | None = None
    priority: int | None = None
    #: a sweep's pinned version of `workflow`
    workflow_version: str | None = None
    #: who sends it (`raw_graphs.permit` decides whether its items may be graphs)
    principal: Any = field(default=None, compare=False)

    def canonical(self) -> dict[str, Any]:
        """What "the same body" means for client_batch_id (the id itself excluded)."""
        body = {
            "tenant": self.tenant, "tasks": self.tasks, "workflow": self.workflow,
            "params": self.params, "sweep": self.sweep, "callback_url": self.callback_url,
            "priority": self.priority,
        }
        # only when pinned: the hash of an unpinned sweep is what it was before pinning
        if self.workflow_version is not None:
            body["workflow_version"] = self.workflow_version
        return body


@dataclass(frozen=True)
class Item:
    """One task of a batch, as POST /tasks would take it."""

    #: a served workflow's name, or `raw_graph.WORKFLOW` for a graph
    workflow: str
    params: dict[str, Any]
    client_task_id: str | None
    callback_url: str | None
    priority: int
    graph: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    workflow_version: str | None = None


def at_index(index: int, exc: errors.FleetError) -> errors.FleetError:
    """`exc` for the batch: the same error, its message and `details.index` naming the task."""
    details = exc.details
    extra = dict(details) if isinstance(details, dict) else (
        {} if details is None else {"problems": details}
    )
    return type(exc)(f"tasks[{index}]: {exc.message}", {"index": index, **extra})


async def at(index: int, step: Awaitable[T]) -> T:
    """`step`, one task's; a refusal it raises that is the task's own (any 4xx: InvalidRequest,
    its 403 and 413 kinds included, and Conflict) names the task (`at_index`). Unavailable and
    Overloaded (503, 429) are the service's state, not the task's, and go as they are."""
    try:
        return await step
    except errors.InvalidRequest as exc:
        raise at_index(index, exc) from None
    except errors.Conflict as exc:
        raise at_index(index, exc) from None


def items_of(req: BatchRequest) -> tuple[list[Item], str]:
    """The batch's tasks in its order, and its kind ("tasks" or "sweep"). Raises
    InvalidRequest for a malformed body or item (an item's with `details.index`)."""
    if req.tasks is not None:
        sweep_fields = (req.workflow, req.params, req.sweep, req.workflow_version)
        if any(f is not None for f in sweep_fields):
            raise errors.InvalidRequest(
                "a batch is either {\"tasks\": [...]} or {\"workflow\", \"params\", \"sweep\"}, "
                "not both (in a tasks list, each task pins its own workflow_version)",
                {"loc": ["body"], "problem": "tasks with workflow/params/sweep/workflow_version"},
            )
        if not 1 <= len(req.tasks) <= sweep.MAX_TASKS:
            raise errors.InvalidRequest(
                f"tasks: a batch holds 1 to {sweep.MAX_TASKS} tasks; got {len(req.tasks)}",
                {"loc": ["body", "tasks"], "tasks": len(req.tasks), "max": sweep.MAX_TASKS},
            )
        items = [_task_item(i, raw, req.priority, req.tenant) for i, raw in enumerate(req.tasks)]
        return items, "tasks"
    if req.workflow is None or req.sweep is None:
        raise errors.InvalidRequest(
            "a batch needs \"tasks\" (a list of task bodies) or \"workflow\" with \"sweep\"",
            {"loc": ["body"], "problem": "neither tasks nor workflow and sweep"},
        )
    expanded = sweep.expand(dict(req.params or {}), req.sweep)
    priority = req.priority or 0
    return [
        Item(req.workflow, p, None, None, priority, workflow_version=req.workflow_version)
        for p in expanded
    ], "sweep"


def _task_item(index: int, raw: Any, batch_priority: int | None, tenant: str) -> Item:
    try:
        body = schemas.SubmitTask.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "problem": e.get("msg")}
            for e in exc.errors()
        ]
        where = "; ".join(".".join(p["loc"]) + ": " + str(p["problem"]) for p in problems[:3])
        raise errors.InvalidRequest(
            f"tasks[{index}]: {where}", {"index": index, "problems": problems}
        ) from None
    if body.tenant is not None and body.tenant != tenant:
        raise errors.InvalidRequest(
            f"tasks[{index}]: a batch's tasks are the batch's tenant's; name the tenant on the "
            "batch",
            {"index": index, "loc": ["body", "tasks", str(index), "tenant"]},
        )
    explicit = "priority" in body.model_fields_set
    priority = body.priority if explicit or batch_priority is None else batch_priority
    return Item(
        # as POST /tasks names a graph's task (routes/tasks.py)
        body.workflow or raw_graph.WORKFLOW, body.params, body.client_task_id,
        body.callback_url, priority, body.graph, body.files, body.workflow_version,
    )
