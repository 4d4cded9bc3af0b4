"""What POST /batches and its siblings do, free of HTTP: submit a batch (a task list or a sweep)
as one transaction, show it with live counts, cancel it.

Every task of a batch is what a POST /tasks body may be (a served workflow, pinned to a
`workflow_version` or not, with images and models by URL; or a raw graph with its files) and is
checked exactly as POST /tasks checks one (`raw_graphs.permit`, `submission.check`); the first
bad one refuses the whole batch, its error naming it (`batch_items.at`), before anything is
recorded. Then the tasks are prepared as single ones are (`submission.prepare`), in two passes:
first every task's models given by URL are put in the bucket (fetched, checksums checked), so a
refused model stores no image; then each task's image inputs are stored. A refusal in that pass
deletes the inputs stored for the batch's earlier tasks (`inputs.discard`). Last, the log
records the batch, every task's `task.submitted` and the `task.model_fetched` of the models
fetched for it in one statement.

A batch's tasks are its tenant's.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from comfy_fleet import errors
from comfy_fleet.batches import batch_state
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.log import events
from comfy_fleet.policies import access
from serve_app import commands, raw_graphs, submission
from serve_app.batch_items import BatchRequest, Item, at, items_of
from serve_app.services import Services

#: Cancels of a batch's tasks running at once.
CANCEL_CONCURRENCY = 16
#: Tries at recording a batch event whose seq another writer took meanwhile.
APPEND_ATTEMPTS = 8


async def submit(services: Services, req: BatchRequest) -> tuple[BatchState, bool]:
    """Record a new batch (→ (state, True)) or find the same earlier one by client_batch_id
    (→ (state, False)). Raises BatchIdempotencyConflict for the same id with another body; a
    bad task's refusal (any 4xx a single submission answers: 422, 403 for a graph this key
    may not send, 409 `workflow_version_unknown`, 413) with `details.index`; Overloaded past
    admission; Unavailable (503) as a single submission does."""
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
    checked = [await at(i, _check(services, req, it, urls)) for i, it in enumerate(items)]
    await submission.admit(services, req.tenant, len(checked))
    batch_id = str(uuid.uuid4())
    prepared, also = await _prepare(services, checked, batch_id)
    submitted = events.BatchSubmitted(
        tenant=req.tenant, task_ids=[t for t, _ in prepared],
        client_batch_id=req.client_batch_id, callback_url=req.callback_url,
        priority=req.priority or 0, request_hash=digest, kind=kind,
    )
    # The refusals below are certain (a unique violation: nothing was recorded), so the inputs
    # staged for the batch are deleted; after any other failure (the database gone mid-commit)
    # the batch may have been recorded, and its inputs stay, as a single submission's do.
    try:
        state, _ = await services.log.append_batch(batch_id, submitted, prepared, also)
    except errors.DuplicateClientBatchId:
        # Lost a race with the same client_batch_id: answer as the winner was answered.
        await submission.discard_inputs(services, [ev for _, ev in prepared])
        assert req.client_batch_id is not None
        existing = await services.log.find_client_batch(req.tenant, req.client_batch_id)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    except errors.DuplicateClientTaskId:
        await submission.discard_inputs(services, [ev for _, ev in prepared])
        raise errors.IdempotencyConflict(
            "a client_task_id of the batch was recorded meanwhile; nothing of the batch was"
        ) from None
    submission.count_admitted(services, req.tenant, len(prepared))
    return state, True


async def _check(
    services: Services, req: BatchRequest, item: Item, urls: set[str]
) -> submission.Checked:
    """One task, checked as POST /tasks checks it (`submission.submit`'s checks)."""
    if item.graph is not None:
        raw_graphs.permit(services.settings, req.principal)
    return await submission.check(
        services, workflow_name=item.workflow, params=item.params,
        client_task_id=item.client_task_id, callback_url=item.callback_url,
        priority=item.priority, tenant=req.tenant, graph=item.graph, files=item.files,
        checked_urls=urls, workflow_version=item.workflow_version,
    )


async def _prepare(
    services: Services, checked: list[submission.Checked], batch_id: str
) -> tuple[list[tuple[str, events.TaskSubmitted]], dict[str, list[events.Event]]]:
    """Each task's `task.submitted` and the events to record after it (see the module's
    docstring for the two passes). A model is looked up in the bucket once per batch."""
    in_bucket: set[str] = set()
    models = [
        await at(i, submission.stage_models(services, c, in_bucket))
        for i, c in enumerate(checked)
    ]
    prepared: list[tuple[str, events.TaskSubmitted]] = []
    also: dict[str, list[events.Event]] = {}
    try:
        for i, (c, staged) in enumerate(zip(checked, models, strict=True)):
            task_id = str(uuid.uuid4())
            event, more = await at(i, submission.prepare(services, c, task_id, batch_id, staged))
            prepared.append((task_id, event))
            if more:
                also[task_id] = more
    except Exception:
        # Nothing of the batch will be recorded: the inputs stored so far name no task.
        await submission.discard_inputs(services, [ev for _, ev in prepared])
        raise
    return prepared, also


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
