"""What POST /batches and its siblings do, free of HTTP: submit a batch (a task list or a sweep)
as one transaction, show it with live counts, cancel it.

Every task of a batch is checked exactly as POST /tasks checks one (`submission.check`); the
first bad one refuses the whole batch with `details.index` naming it, before anything is
recorded (image inputs are staged only once every task passed). Then `submission.prepare`
builds each task's first event and the log records the batch and all its tasks at once.

A batch's tasks are its tenant's. Raw graphs and models given by URL are refused in a batch
(422 naming the task): a model fetched for a task is a `task.model_fetched` event of its own,
which the one statement recording a batch does not store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from comfy_fleet import errors
from comfy_fleet.batches import batch_state, sweep
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.log import events
from comfy_fleet.policies import access
from comfy_fleet.workflows import model_params
from serve_app import commands, schemas, submission
from serve_app.services import Services

#: Cancels of a batch's tasks running at once.
CANCEL_CONCURRENCY = 16
#: Tries at recording a batch event whose seq another writer took meanwhile.
APPEND_ATTEMPTS = 8

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

    def canonical(self) -> dict[str, Any]:
        """What "the same body" means for client_batch_id (the id itself excluded)."""
        return {
            "tenant": self.tenant, "tasks": self.tasks, "workflow": self.workflow,
            "params": self.params, "sweep": self.sweep, "callback_url": self.callback_url,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class Item:
    workflow: str
    params: dict[str, Any]
    client_task_id: str | None
    callback_url: str | None
    priority: int


def at_index(index: int, exc: errors.FleetError) -> errors.FleetError:
    """`exc` for the batch: the same error, its message and `details.index` naming the task."""
    details = exc.details
    extra = dict(details) if isinstance(details, dict) else (
        {} if details is None else {"problems": details}
    )
    return type(exc)(f"tasks[{index}]: {exc.message}", {"index": index, **extra})


async def _item(index: int, step: Awaitable[T]) -> T:
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
        if req.workflow is not None or req.params is not None or req.sweep is not None:
            raise errors.InvalidRequest(
                "a batch is either {\"tasks\": [...]} or {\"workflow\", \"params\", \"sweep\"}, "
                "not both", {"loc": ["body"], "problem": "tasks with workflow/params/sweep"},
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
    return [Item(req.workflow, p, None, None, priority) for p in expanded], "sweep"


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
    if body.graph is not None or body.files is not None:
        raise errors.InvalidRequest(
            f"tasks[{index}]: a raw graph cannot be part of a batch; submit it with POST /tasks",
            {"index": index, "reason": "raw_graph", "loc": ["body", "tasks", str(index), "graph"]},
        )
    if body.workflow is None:
        raise errors.InvalidRequest(
            f"tasks[{index}]: workflow is required",
            {"index": index, "loc": ["body", "tasks", str(index), "workflow"]},
        )
    if body.tenant is not None and body.tenant != tenant:
        raise errors.InvalidRequest(
            f"tasks[{index}]: a batch's tasks are the batch's tenant's; name the tenant on the "
            "batch",
            {"index": index, "loc": ["body", "tasks", str(index), "tenant"]},
        )
    explicit = "priority" in body.model_fields_set
    priority = body.priority if explicit or batch_priority is None else batch_priority
    return Item(body.workflow, body.params, body.client_task_id, body.callback_url, priority)


async def submit(services: Services, req: BatchRequest) -> tuple[BatchState, bool]:
    """Record a new batch (→ (state, True)) or find the same earlier one by client_batch_id
    (→ (state, False)). Raises BatchIdempotencyConflict for the same id with another body;
    InvalidRequest/Conflict with `details.index` for a bad task; Overloaded past admission."""
    digest = submission.request_hash(req.canonical())
    if req.client_batch_id is not None:
        existing = await services.log.find_client_batch(req.tenant, req.client_batch_id)
        if existing is not None:
            return _same_or_conflict(existing, digest), False
    items, kind = items_of(req)
    await _check_client_task_ids(services, req.tenant, items)
    urls: set[str] = set()
    if req.callback_url is not None:
        parsed = services.url_policy.check_url(req.callback_url)
        await services.url_policy.resolve_and_check(parsed)
    checked = [
        await _item(i, submission.check(
            services, workflow_name=it.workflow, params=it.params,
            client_task_id=it.client_task_id, callback_url=it.callback_url,
            priority=it.priority, tenant=req.tenant, checked_urls=urls,
        ))
        for i, it in enumerate(items)
    ]
    for i, c in enumerate(checked):
        _refuse_models_by_url(i, c)
    await submission.admit(services, req.tenant, len(checked))
    batch_id = str(uuid.uuid4())
    task_ids = [str(uuid.uuid4()) for _ in checked]
    prepared = [
        (tid, (await _item(i, submission.prepare(services, c, tid, batch_id)))[0])
        for i, (tid, c) in enumerate(zip(task_ids, checked, strict=True))
    ]
    submitted = events.BatchSubmitted(
        tenant=req.tenant, task_ids=task_ids, client_batch_id=req.client_batch_id,
        callback_url=req.callback_url, priority=req.priority or 0, request_hash=digest, kind=kind,
    )
    try:
        state, _ = await services.log.append_batch(batch_id, submitted, prepared)
    except errors.DuplicateClientBatchId:
        # Lost a race with the same client_batch_id: answer as the winner was answered.
        assert req.client_batch_id is not None
        existing = await services.log.find_client_batch(req.tenant, req.client_batch_id)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    except errors.DuplicateClientTaskId:
        raise errors.IdempotencyConflict(
            "a client_task_id of the batch was recorded meanwhile; nothing of the batch was"
        ) from None
    submission.count_admitted(services, req.tenant, len(prepared))
    return state, True


def _refuse_models_by_url(index: int, checked: submission.Checked) -> None:
    """A model given by URL is refused in a batch (see the module's docstring)."""
    by_url = model_params.by_url(checked.workflow.manifest.params, checked.resolved)
    if by_url:
        param = sorted(by_url)[0]
        raise errors.WorkflowParamsInvalid(
            f"tasks[{index}]: {param}: a model given by URL cannot be part of a batch; name a "
            "model file the fleet holds, or submit the task with POST /tasks",
            {"index": index, "reason": "model_by_url", "param": param},
        )


async def _check_client_task_ids(services: Services, tenant: str, items: list[Item]) -> None:
    """A client_task_id may name one task: not two of the batch, nor one already recorded."""
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.client_task_id is None:
            continue
        if it.client_task_id in seen:
            raise errors.InvalidRequest(
                f"tasks[{i}]: client_task_id {it.client_task_id!r} is also that of "
                f"tasks[{seen[it.client_task_id]}]",
                {"index": i, "client_task_id": it.client_task_id},
            )
        seen[it.client_task_id] = i
    taken = await services.log.taken_client_task_ids(tenant, list(seen))
    if taken:
        first = min(seen[c] for c in taken)
        raise errors.IdempotencyConflict(
            f"tasks[{first}]: client_task_id {items[first].client_task_id!r} names a task already "
            "recorded; a batch only makes new tasks",
            {"index": first, "client_task_id": items[first].client_task_id},
        )


def _same_or_conflict(existing: BatchState, digest: str) -> BatchState:
    if existing.request_hash != digest:
        raise errors.BatchIdempotencyConflict(
            f"client_batch_id {existing.client_batch_id!r} was used for a different request",
            {"batch_id": existing.batch_id},
        )
    return existing


def batch_id_of(raw: str) -> str:
    """The canonical form of a batch id from a path; a malformed one is unknown (404)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise errors.BatchNotFound(f"no batch {raw[:64]!r}") from None


async def get(services: Services, batch_id: str, principal: access.Principal) -> BatchState:
    """The batch, if `principal` may see it; else BatchNotFound, as for an unknown id, so
    another tenant's batch is not revealed."""
    state = await services.log.get_batch(batch_id_of(batch_id))
    access.check_access(principal, state.tenant, errors.BatchNotFound(f"no batch {batch_id}"))
    return state


async def view(services: Services, state: BatchState) -> dict[str, Any]:
    """The batch as the API shows it, with its tasks' counts now."""
    counts = await services.log.batch_counts(state.batch_id)
    last_end = None
    if state.finished_at is None and batch_state.all_ended(state, counts):
        last_end = await services.log.batch_last_end(state.batch_id)
    return batch_state.to_view(state, counts, last_end)


async def cancel(services: Services, state: BatchState) -> BatchState:
    """Record the batch's cancel (once) and cancel each of its tasks not yet ended, as
    POST /tasks/{id}/cancel does, a few at a time. Returns the batch's state."""
    log = services.log
    for _ in range(APPEND_ATTEMPTS):
        if state.cancel_requested:
            break
        try:
            state = await log.append_batch_events(
                state.batch_id, state.seq, [events.BatchCancelRequested()], state
            )
        except errors.ConcurrencyConflict:
            state = await log.get_batch(state.batch_id)
    gate = asyncio.Semaphore(CANCEL_CONCURRENCY)
    # The batch's own tenant: every task of the batch is its tenant's.
    principal = access.Principal(state.tenant)

    async def one(task_id: str) -> None:
        async with gate:
            await commands.request_cancel(services, task_id, principal)

    await asyncio.gather(*(one(t) for t in await log.open_tasks_of_batch(state.batch_id)))
    return state
