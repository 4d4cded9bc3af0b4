"""A batch survives the whole service killed mid-batch: right after the restart its counts are
its tasks' statuses, it completes, and its callback gets exactly one batch.completed."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.faults.conftest import FaultFleet
from tests.support.polling import eventually
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

SIZE = 48


@pytest.fixture
async def hooks() -> AsyncIterator[WebhookReceiver]:
    """A receiver of the test's own: the suite's shared one reads every call as a task's."""
    receiver = await WebhookReceiver().start()
    try:
        yield receiver
    finally:
        await receiver.close()


def batch_calls(hooks: WebhookReceiver, batch_id: str) -> list[Any]:
    return [
        c for c in hooks.calls
        if c.json.get("type") == "batch.completed" and c.json["batch"]["batch_id"] == batch_id
    ]


async def statuses(fleet: FaultFleet, ids: list[str]) -> Counter[str]:
    return Counter([(await fleet.http.get(f"/tasks/{t}")).json()["status"] for t in ids])


async def test_service_killed_mid_batch_counts_right_and_one_batch_webhook(
    fleet: FaultFleet, hooks: WebhookReceiver
) -> None:
    r = await fleet.http.post("/batches", json={
        "workflow": "solid", "params": {"height": 8},
        "sweep": {"width": list(range(8, 8 + SIZE // 4)), "color": [1, 2, 3, 4]},
        "callback_url": hooks.url, "client_batch_id": "crash-1",
    })
    assert r.status_code == 202, r.text
    batch = r.json()
    ids = batch["task_ids"]
    assert len(ids) == SIZE

    async def under_way() -> bool:
        counts = (await fleet.http.get(f"/batches/{batch['batch_id']}")).json()["counts"]
        return 3 <= counts["succeeded"] < SIZE - 10

    await eventually(under_way, timeout=60, interval=0.05, what="the batch under way")
    await fleet.restart_service()
    await fleet.wait_ready()

    # Right after the restart: the counts are the tasks' statuses, all of them.
    shown = (await fleet.http.get(f"/batches/{batch['batch_id']}")).json()
    assert sum(shown["counts"].values()) == SIZE
    assert 3 <= shown["counts"]["succeeded"]
    # The same body under its client_batch_id is still the same batch.
    again = await fleet.http.post("/batches", json={
        "workflow": "solid", "params": {"height": 8},
        "sweep": {"width": list(range(8, 8 + SIZE // 4)), "color": [1, 2, 3, 4]},
        "callback_url": hooks.url, "client_batch_id": "crash-1",
    })
    assert again.status_code == 200 and again.json()["batch_id"] == batch["batch_id"]

    async def completed() -> dict[str, Any] | None:
        b = (await fleet.http.get(f"/batches/{batch['batch_id']}")).json()
        return b if b["status"] == "completed" else None

    done = await eventually(completed, timeout=120, interval=0.2, what="the batch's end")
    assert done["counts"] == {**dict.fromkeys(done["counts"], 0), **await statuses(fleet, ids)}
    assert done["counts"]["succeeded"] == SIZE, done["counts"]
    await eventually(lambda: batch_calls(hooks, batch["batch_id"]), timeout=60, what="the webhook")
    await asyncio.sleep(1.5)  # a second one would come in this time
    calls = [c for c in batch_calls(hooks, batch["batch_id"]) if c.status < 300]
    assert len(calls) == 1
    assert calls[0].json["batch"]["counts"]["succeeded"] == SIZE
    evs = (await fleet.http.get(f"/tasks/{ids[0]}/events")).json()
    assert evs[0]["data"]["batch_id"] == batch["batch_id"]


async def test_batch_ended_while_the_webhook_actor_was_dead_completes_once_at_restart(
    fleet: FaultFleet, hooks: WebhookReceiver
) -> None:
    """The last tasks end while nothing listens for their notices (the webhook actor is dead):
    the scan at its next start records `batch.completed` once and delivers the one webhook."""
    import ray

    from actors.remote import NAMESPACE, WEBHOOKS_NAME

    ray.kill(ray.get_actor(WEBHOOKS_NAME, namespace=NAMESPACE), no_restart=True)
    r = await fleet.http.post("/batches", json={
        "tasks": [{"workflow": "solid", "params": {"width": 8 + i, "height": 8}} for i in range(6)],
        "callback_url": hooks.url,
    })
    assert r.status_code == 202, r.text
    batch_id, ids = r.json()["batch_id"], r.json()["task_ids"]

    async def all_succeeded() -> bool:
        return (await statuses(fleet, ids))["succeeded"] == 6

    await eventually(all_succeeded, timeout=60, interval=0.1, what="the batch's tasks")
    shown = (await fleet.http.get(f"/batches/{batch_id}")).json()
    assert shown["status"] == "completed" and shown["finished_at"] is not None  # from its tasks
    assert batch_calls(hooks, batch_id) == []
    await fleet.restart_service()
    await fleet.wait_ready()
    await eventually(lambda: batch_calls(hooks, batch_id), timeout=60, what="the webhook")
    await asyncio.sleep(1.0)
    assert len([c for c in batch_calls(hooks, batch_id) if c.status < 300]) == 1
    conn = await asyncpg.connect(fleet.settings.database_url)
    try:
        types = [r["type"] for r in await conn.fetch(
            "SELECT type FROM batch_events WHERE batch_id = $1 ORDER BY seq", batch_id
        )]
    finally:
        await conn.close()
    assert types == ["batch.submitted", "batch.completed", "webhook.delivered"]
    after = (await fleet.http.get(f"/batches/{batch_id}")).json()
    assert after["finished_at"] == shown["finished_at"]
