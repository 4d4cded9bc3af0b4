"""The batch commands' rules that need no service: an item's error names its index, another
tenant's batch is an unknown one, the completion is recorded once. In memory, no I/O."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from actors import batch_webhooks
from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.policies import access
from serve_app import batch_items, batches


async def recorded(log: InMemoryEventLog, n: int, tenant: str = "acme") -> tuple[str, list[str]]:
    batch_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(n)]
    tasks = [
        (t, events.TaskSubmitted(
            workflow="solid", workflow_version="v", params={}, prompt={}, batch_id=batch_id,
            tenant=tenant,
        ))
        for t in ids
    ]
    sub = events.BatchSubmitted(tenant=tenant, task_ids=ids, callback_url="http://x/h")
    await log.append_batch(batch_id, sub, tasks)
    return batch_id, ids


def test_an_item_error_keeps_its_class_and_names_the_index() -> None:
    exc = batch_items.at_index(2, errors.WorkflowParamsInvalid("width: below 1", [{"param": "width"}]))
    assert isinstance(exc, errors.WorkflowParamsInvalid) and exc.status == 422
    assert exc.details == {"index": 2, "problems": [{"param": "width"}]}
    assert exc.message.startswith("tasks[2]: ")
    keyed = batch_items.at_index(0, errors.UnknownWorkflow("no", {"workflow": "x"}))
    assert keyed.details == {"index": 0, "workflow": "x"}


async def test_another_tenants_batch_is_not_found_as_an_unknown_one() -> None:
    log = InMemoryEventLog()
    services: Any = SimpleNamespace(log=log)
    batch_id, _ = await recorded(log, 1, tenant="acme")
    assert (await batches.get(services, batch_id, access.ADMIN)).tenant == "acme"  # an admin
    assert (await batches.get(services, batch_id, access.Principal("acme"))).batch_id == batch_id
    with pytest.raises(errors.BatchNotFound) as other:
        await batches.get(services, batch_id, access.Principal("beta"))
    with pytest.raises(errors.BatchNotFound) as unknown:
        await batches.get(services, str(uuid.uuid4()), access.Principal("beta"))
    assert other.value.code == unknown.value.code == "batch_not_found"
    with pytest.raises(errors.BatchNotFound):
        await batches.get(services, "not-an-id", access.ADMIN)


async def test_the_completion_is_recorded_once_however_many_decide_it() -> None:
    log = InMemoryEventLog()
    batch_id, ids = await recorded(log, 3)
    assert await batch_webhooks.complete_if_done(log, batch_id) is None
    for t in ids:
        state = await log.get(t)
        await log.append(t, state.seq, [events.TaskCancelled(where="router")], state)
    states = await asyncio.gather(
        *(batch_webhooks.complete_if_done(log, batch_id) for _ in range(5))
    )
    assert all(s is not None and s.status == "completed" for s in states)
    types = [e.type for e in await log.read_batch(batch_id)]
    assert types == ["batch.submitted", "batch.completed"]
    done = await log.get_batch(batch_id)
    assert done.completion_counts is not None and done.completion_counts["cancelled"] == 3
