"""One contract suite for the batch methods of every EventLog (comfy_fleet/log/batch_log.py):
in memory and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.log.event_log import EventLog, InMemoryEventLog
from comfy_fleet.log.postgres import PostgresEventLog
from tests.support.polling import eventually


def task(
    batch_id: str, i: int, client_task_id: str | None = None, tenant: str = "default"
) -> events.TaskSubmitted:
    return events.TaskSubmitted(
        workflow="solid", workflow_version="v1", params={"width": i},
        prompt={"1": {"class_type": "EmptyImage", "inputs": {"width": i}}},
        client_task_id=client_task_id, request_hash=f"h{i}", batch_id=batch_id,
        tenant=tenant,
    )


def batch(
    n: int, *, tenant: str = "default", client_batch_id: str | None = None,
    client_task_ids: list[str | None] | None = None,
) -> tuple[str, events.BatchSubmitted, list[tuple[str, events.TaskSubmitted]]]:
    batch_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(n)]
    ctids = client_task_ids or [None] * n
    tasks = [(t, task(batch_id, i, ctids[i], tenant)) for i, t in enumerate(ids)]
    sub = events.BatchSubmitted(
        tenant=tenant, task_ids=ids, client_batch_id=client_batch_id,
        callback_url="http://127.0.0.1:9/b", request_hash="bh",
    )
    return batch_id, sub, tasks


async def end(log: EventLog, task_id: str) -> None:
    state = await log.get(task_id)
    await log.append(task_id, state.seq, [events.TaskCancelled(where="router")], state)


class BatchLogContract:
    @pytest.fixture
    async def log(self) -> AsyncIterator[EventLog]:
        raise NotImplementedError

    async def test_a_batch_and_its_tasks_are_recorded_together(self, log: EventLog) -> None:
        heard: list[str] = []
        await log.listen_queued(lambda tid, *_: heard.append(tid))
        # Notices are best effort: wait for LISTEN (on every channel asked for) to be on.
        listening = asyncio.Event()
        await log.listen_ended(lambda *_: None, listening.set)
        await asyncio.wait_for(listening.wait(), 10)
        batch_id, sub, tasks = batch(5, client_batch_id="c1")
        state, states = await log.append_batch(batch_id, sub, tasks)
        assert state.batch_id == batch_id and state.seq == 1 and state.status == "running"
        assert [s.task_id for s in states] == sub.task_ids
        assert [s.created_at for s in states] == sorted(s.created_at for s in states)
        assert await log.get_batch(batch_id) == state
        assert [e.type for e in await log.read_batch(batch_id)] == ["batch.submitted"]
        for t, _ in tasks:
            got = await log.get(t)
            assert got.batch_id == batch_id and got.status == "queued"
            assert [e.type for e in await log.read(t)] == ["task.submitted"]
        assert await log.batch_counts(batch_id) == {"queued": 5}
        assert await log.open_tasks_of_batch(batch_id) == sub.task_ids
        found = await log.find_client_batch("default", "c1")
        assert found is not None and found.batch_id == batch_id
        assert await log.find_client_batch("other", "c1") is None
        page, _ = await log.list_tasks(batch_id=batch_id, limit=10)
        assert [s.task_id for s in page] == list(reversed(sub.task_ids))
        # The router hears of every task (in PostgreSQL: one notice, then a read of the batch).
        await eventually(lambda: set(sub.task_ids) <= set(heard), what="queued notices")

    async def test_a_taken_client_id_records_nothing(self, log: EventLog) -> None:
        _, sub, tasks = batch(2, client_batch_id="dup")
        await log.append_batch(str(uuid.uuid4()), sub, tasks)
        again_id, again, again_tasks = batch(3, client_batch_id="dup")
        with pytest.raises(errors.DuplicateClientBatchId):
            await log.append_batch(again_id, again, again_tasks)
        # the same client_batch_id of another tenant is another batch
        other_id, other, other_tasks = batch(1, tenant="acme", client_batch_id="dup")
        await log.append_batch(other_id, other, other_tasks)
        _, ok, ok_tasks = batch(1, client_task_ids=["ct-1"])
        await log.append_batch(str(uuid.uuid4()), ok, ok_tasks)
        assert await log.taken_client_task_ids("default", ["ct-1", "ct-2"]) == {"ct-1"}
        assert await log.taken_client_task_ids("acme", ["ct-1"]) == set()  # unique per tenant
        bad_id, bad, bad_tasks = batch(3, client_task_ids=[None, None, "ct-1"])
        with pytest.raises(errors.DuplicateClientTaskId):
            await log.append_batch(bad_id, bad, bad_tasks)
        for refused_id, refused in ((again_id, again_tasks), (bad_id, bad_tasks)):
            with pytest.raises(errors.BatchNotFound):
                await log.get_batch(refused_id)
            for t, _ in refused:
                with pytest.raises(errors.TaskNotFound):
                    await log.get(t)
                assert await log.read(t) == []

    async def test_completion_is_recorded_once(self, log: EventLog) -> None:
        ended: list[str] = []
        listening = asyncio.Event()
        # Notices are best effort: only those sent once LISTEN is on are heard.
        await log.listen_batch_task_ended(ended.append, listening.set)
        await asyncio.wait_for(listening.wait(), 10)
        batch_id, sub, tasks = batch(2)
        state, _ = await log.append_batch(batch_id, sub, tasks)
        await end(log, sub.task_ids[0])
        assert await log.batches_to_complete() == []
        await end(log, sub.task_ids[1])
        await eventually(lambda: ended.count(batch_id) == 2, what="batch task ends heard")
        assert await log.batches_to_complete() == [batch_id]
        assert await log.batch_counts(batch_id) == {"cancelled": 2}
        last = await log.batch_last_end(batch_id)
        assert last is not None
        done = events.BatchCompleted(finished_at=last.isoformat(), counts={"cancelled": 2})
        won = await log.append_batch_events(batch_id, 1, [done], state)
        with pytest.raises(errors.ConcurrencyConflict):
            await log.append_batch_events(batch_id, 1, [done], state)
        assert won.status == "completed" and won.end_seq == 2 and won.finished_at == last
        assert won.webhook == "pending"
        assert await log.get_batch(batch_id) == won
        assert await log.batches_to_complete() == []
        assert await log.pending_batch_webhooks() == [(batch_id, "http://127.0.0.1:9/b")]
        delivered = await log.append_batch_events(
            batch_id, 2, [events.WebhookDelivered(webhook_id="m", attempt=1, status_code=200)]
        )
        assert delivered.webhook == "delivered"
        assert await log.pending_batch_webhooks() == []

    async def test_a_tasks_further_events_are_recorded_with_it(self, log: EventLog) -> None:
        batch_id, sub, tasks = batch(3)
        fetched = [
            events.TaskModelFetched(sha256="a" * 64, bytes=10, seconds=0.5),
            events.TaskModelFetched(sha256="b" * 64, bytes=20, seconds=0.25),
        ]
        middle = tasks[1][0]
        _, states = await log.append_batch(batch_id, sub, tasks, {middle: fetched})
        assert [s.seq for s in states] == [1, 3, 1]
        assert [s.status for s in states] == ["queued"] * 3
        got = await log.read(middle)
        assert [(e.seq, e.type) for e in got] == [
            (1, "task.submitted"), (2, "task.model_fetched"), (3, "task.model_fetched"),
        ]
        assert [e.event for e in got[1:]] == fetched
        assert (await log.get(middle)).seq == 3
        assert [e.type for e in await log.read(tasks[0][0])] == ["task.submitted"]
        # The next writer appends after them, as after a single submission's.
        await end(log, middle)
        assert (await log.get(middle)).status == "cancelled"
        assert await log.batch_counts(batch_id) == {"queued": 2, "cancelled": 1}

    async def test_unknown_batches(self, log: EventLog) -> None:
        with pytest.raises(errors.BatchNotFound):
            await log.get_batch(str(uuid.uuid4()))
        assert await log.read_batch("not-a-uuid") == []
        assert await log.batch_counts(str(uuid.uuid4())) == {}


class TestInMemoryBatchLog(BatchLogContract):
    @pytest.fixture
    async def log(self) -> AsyncIterator[EventLog]:
        yield InMemoryEventLog()


@pytest.mark.postgres
class TestPostgresBatchLog(BatchLogContract):
    @pytest.fixture
    async def log(self, pg_dsn: str) -> AsyncIterator[EventLog]:
        log = await PostgresEventLog.connect(pg_dsn)
        try:
            yield log
        finally:
            await log.close()

    async def test_the_batch_stream_is_append_only(
        self, log: PostgresEventLog, pg_dsn: str
    ) -> None:
        import asyncpg

        batch_id, sub, tasks = batch(1)
        await log.append_batch(batch_id, sub, tasks)
        conn = await asyncpg.connect(pg_dsn)
        try:
            for stmt in ("UPDATE batch_events SET type = 'x'", "DELETE FROM batch_events"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(stmt)
        finally:
            await conn.close()


@pytest.mark.postgres
async def test_concurrent_deciders_record_one_completion(pg_dsn: str) -> None:
    """Several deciders at once on the real log (as when the last tasks end together on
    several endpoints): the batch stream's seq lets one `batch.completed` in."""
    from actors import batch_webhooks

    logs = [await PostgresEventLog.connect(pg_dsn) for _ in range(4)]
    try:
        batch_id, sub, tasks = batch(4)
        await logs[0].append_batch(batch_id, sub, tasks)
        await asyncio.gather(*(end(logs[i], t) for i, (t, _) in enumerate(tasks)))
        done = await asyncio.gather(
            *(batch_webhooks.complete_if_done(log, batch_id) for log in logs for _ in range(3))
        )
        assert all(d is not None and d.end_seq == 2 for d in done)
        assert [e.type for e in await logs[0].read_batch(batch_id)] == [
            "batch.submitted", "batch.completed",
        ]
    finally:
        for log in logs:
            await log.close()
