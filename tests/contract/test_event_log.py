"""One contract suite for every EventLog: in memory and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from comfy_fleet import errors

from comfy_fleet.log import events, task_state
from comfy_fleet.delivery.slots import UNKNOWN, receiver_of
from comfy_fleet.log.event_log import EventLog, InMemoryEventLog
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.log.rebuild import task_id_ranges
from comfy_fleet.workflows import versions
from tests.support.polling import eventually


def submitted(
    client_task_id: str | None = None, priority: int = 0, tenant: str = "default"
) -> events.TaskSubmitted:
    return events.TaskSubmitted(
        tenant=tenant,
        workflow="solid",
        workflow_version="v1",
        params={"width": 8},
        prompt={"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}},
        client_task_id=client_task_id,
        callback_url="http://127.0.0.1:9/hook",
        priority=priority,
        request_hash="h",
    )


class EventLogContract:
    @pytest.fixture
    async def log(self) -> AsyncIterator[EventLog]:
        raise NotImplementedError

    async def test_append_then_read_in_order(self, log: EventLog) -> None:
        tid = str(uuid.uuid4())
        s = await log.append(tid, 0, [submitted()])
        s = await log.append(tid, 1, [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)], s)
        stream = await log.read(tid)
        assert [e.seq for e in stream] == [1, 2]
        assert [e.type for e in stream] == ["task.submitted", "task.dispatched"]
        assert stream[0].position < stream[1].position
        assert (await log.read(tid, after_seq=1))[0].type == "task.dispatched"
        got = await log.get(tid)
        assert got.status == task_state.DISPATCHED and got.prompt_id == "p"
        assert task_state.replay(stream) == got == s

    async def test_stale_writer_conflicts_and_stores_nothing(self, log: EventLog) -> None:
        tid = str(uuid.uuid4())
        s = await log.append(tid, 0, [submitted()])
        await log.append(tid, 1, [events.TaskDispatched(endpoint="a:1", prompt_id="p1", attempt=1)], s)
        with pytest.raises(errors.ConcurrencyConflict):
            await log.append(tid, 1, [events.TaskDispatched(endpoint="b:1", prompt_id="p2", attempt=1)], s)
        stream = await log.read(tid)
        assert len(stream) == 2 and stream[1].event.endpoint == "a:1"  # type: ignore[attr-defined]

    async def test_batch_is_atomic(self, log: EventLog) -> None:
        tid = str(uuid.uuid4())
        s = await log.append(tid, 0, [submitted()])
        s = await log.append(
            tid,
            1,
            [
                events.TaskDispatched(endpoint="a:1", prompt_id="p", attempt=1),
                events.TaskStarted(prompt_id="p"),
                events.TaskSucceeded(prompt_id="p"),
            ],
            s,
        )
        assert s.seq == 4 and s.status == task_state.SUCCEEDED and s.end_seq == 4
        assert (await log.get(tid)).webhook == task_state.WEBHOOK_PENDING
        assert await log.pending_webhooks() == [(tid, s.callback_url)]

    async def test_duplicate_client_task_id(self, log: EventLog) -> None:
        ctid = f"c-{uuid.uuid4()}"
        await log.append(str(uuid.uuid4()), 0, [submitted(ctid)])
        with pytest.raises(errors.DuplicateClientTaskId):
            await log.append(str(uuid.uuid4()), 0, [submitted(ctid)])
        found = await log.find_client_task(ctid)
        assert found is not None and found.client_task_id == ctid

    async def test_client_task_id_is_unique_per_tenant(self, log: EventLog) -> None:
        ctid = f"c-{uuid.uuid4()}"
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        await log.append(a, 0, [submitted(ctid, tenant="acme")])
        await log.append(b, 0, [submitted(ctid, tenant="beta")])  # another tenant: its own id
        with pytest.raises(errors.DuplicateClientTaskId):
            await log.append(str(uuid.uuid4()), 0, [submitted(ctid, tenant="acme")])
        found_a = await log.find_client_task(ctid, "acme")
        found_b = await log.find_client_task(ctid, "beta")
        assert (found_a and found_a.task_id, found_b and found_b.task_id) == (a, b)
        assert found_a is not None and found_a.tenant == "acme"
        assert await log.find_client_task(ctid) is None  # tenant `default` has none

    async def test_list_filters_by_tenant(self, log: EventLog) -> None:
        ids = {t: str(uuid.uuid4()) for t in ("acme", "beta", "default")}
        for tenant, tid in ids.items():
            await log.append(tid, 0, [submitted(tenant=tenant)])
        for tenant, tid in ids.items():
            page, _ = await log.list_tasks(tenant=tenant, limit=10)
            assert [s.task_id for s in page] == [tid] and page[0].tenant == tenant
        assert len((await log.list_tasks(limit=10))[0]) == 3

    async def test_queued_tasks_and_dispatches_carry_the_tenant(self, log: EventLog) -> None:
        a, b, c = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        await log.append(a, 0, [submitted(tenant="acme")])
        sb = await log.append(b, 0, [submitted(tenant="beta")])
        sc = await log.append(c, 0, [submitted(tenant="acme")])
        await log.append(b, 1, [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)], sb)
        await log.append(c, 1, [events.TaskDispatched(endpoint="e:1", prompt_id="q", attempt=1)], sc)
        assert [(r[0], r[5]) for r in await log.queued_tasks()] == [(a, "acme")]
        assert await log.dispatch_tenants() == ["beta", "acme"]
        assert await log.dispatch_tenants(1) == ["acme"]

    async def test_unknown_task(self, log: EventLog) -> None:
        with pytest.raises(errors.TaskNotFound):
            await log.get(str(uuid.uuid4()))
        assert await log.read(str(uuid.uuid4())) == []

    async def test_list_pages_newest_first_and_filters(self, log: EventLog) -> None:
        ids = []
        for i in range(5):
            tid = str(uuid.uuid4())
            await log.append(tid, 0, [submitted(priority=i)])
            ids.append(tid)
        page1, cur = await log.list_tasks(limit=2)
        page2, cur2 = await log.list_tasks(limit=2, cursor=cur)
        page3, cur3 = await log.list_tasks(limit=2, cursor=cur2)
        got = [s.task_id for s in page1 + page2 + page3]
        assert got == list(reversed(ids)) and cur3 is None
        assert (await log.list_tasks(status="succeeded"))[0] == []
        assert len((await log.list_tasks(workflow="solid", limit=10))[0]) == 5
        with pytest.raises(errors.InvalidRequest):
            await log.list_tasks(cursor="garbage!")

    async def test_open_tasks_excludes_final(self, log: EventLog) -> None:
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        await log.append(a, 0, [submitted()])
        s = await log.append(b, 0, [submitted()])
        await log.append(b, 1, [events.TaskFailed(code="x", message="y")], s)
        assert [t.task_id for t in await log.open_tasks()] == [a]

    async def test_queued_tasks_lists_only_waiting_ones(self, log: EventLog) -> None:
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        await log.append(a, 0, [submitted(priority=3)])
        s = await log.append(b, 0, [submitted()])
        await log.append(b, 1, [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)], s)
        rows = await log.queued_tasks()
        assert [(r[0], r[1], r[3], r[4]) for r in rows] == [(a, 3, "solid", [])]

    async def test_fleet_events_fold_over_configured(self, log: EventLog) -> None:
        from comfy_fleet.log import fleet

        await log.append_fleet(fleet.EndpointAdded(endpoint="h:2", labels=["a100"]))
        await log.append_fleet(fleet.EndpointRemoved(endpoint="h:1"))
        await log.append_fleet(fleet.EndpointAdded(endpoint="h:3"))
        await log.append_fleet(fleet.EndpointRemoved(endpoint="h:3"))
        got = fleet.endpoints({"h:1": []}, await log.read_fleet())
        assert got == {"h:2": ["a100"]}

    async def test_wait_for_change_wakes_on_append(self, log: EventLog) -> None:
        tid = str(uuid.uuid4())
        s = await log.append(tid, 0, [submitted()])
        waiter = asyncio.create_task(log.wait_for_change(tid, 1, 10))
        await asyncio.sleep(0.2)
        await log.append(tid, 1, [events.TaskCancelRequested()], s)
        await asyncio.wait_for(waiter, 5)
        assert len(await log.read(tid)) == 2

    async def test_ends_are_told_once_with_their_endpoint_and_webhook(self, log: EventLog) -> None:
        heard: list[tuple[str, str | None, str | None]] = []
        caught_up: list[int] = []
        await log.listen_ended(lambda *notice: heard.append(notice), lambda: caught_up.append(1))
        await eventually(lambda: caught_up, what="listening")
        with_hook, without = str(uuid.uuid4()), str(uuid.uuid4())

        s = await log.append(with_hook, 0, [submitted()])
        s = await log.append(with_hook, s.seq, [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)], s)
        s = await log.append(with_hook, s.seq, [events.TaskStarted(prompt_id="p"), events.TaskSucceeded(prompt_id="p")], s)
        s = await log.append(with_hook, s.seq, [events.TaskProgressed(prompt_id="p", value=1, max=1)], s)  # late
        s = await log.append(with_hook, s.seq, [events.WebhookAttempted(
            webhook_id="w", attempt=1, status_code=500, error=None, retry_in_s=1.0)], s)
        s = await log.append(with_hook, s.seq, [events.WebhookDelivered(webhook_id="w", attempt=2, status_code=200)], s)
        s = await log.append(with_hook, s.seq, [events.WebhookRedeliveryRequested()], s)

        plain = dataclasses.replace(submitted(), callback_url=None)
        q = await log.append(without, 0, [plain])
        await log.append(without, q.seq, [events.TaskCancelled(where="router")], q)

        to = receiver_of(str(submitted().callback_url))
        expected = [(with_hook, "e:1", to), (with_hook, "e:1", to), (without, None, None)]
        await eventually(lambda: len(heard) >= 3, what="three notices")
        await asyncio.sleep(0.2)  # and no more
        assert heard == expected
        assert await log.ended_among([with_hook, without, str(uuid.uuid4()), "not-a-task"]) == {with_hook, without}
        assert await log.ended_among([]) == set()

    async def test_waiting_tasks_are_told_when_submitted_and_when_requeued(self, log: EventLog) -> None:
        heard: list[tuple[str, int, float, str, list[str], bool, str]] = []
        caught_up: list[int] = []
        await log.listen_queued(lambda *notice: heard.append(notice))
        await log.listen_ended(lambda *_: None, lambda: caught_up.append(1))  # the same listener
        await eventually(lambda: caught_up, what="listening")
        tid = str(uuid.uuid4())

        s = await log.append(tid, 0, [submitted(priority=3)])
        s = await log.append(tid, s.seq, [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)], s)
        s = await log.append(tid, s.seq, [events.TaskRequeued(endpoint="e:1", prompt_id="p", reason="lost")], s)
        s = await log.append(tid, s.seq, [events.TaskCancelRequested()], s)  # still waiting: no news

        created = s.created_at.timestamp()
        expected = [
            (tid, 3, created, "solid", [], False, "default"),
            (tid, 3, created, "solid", [], True, "default"),
        ]
        await eventually(lambda: len(heard) >= 2, what="two notices")
        await asyncio.sleep(0.2)  # and no more
        assert [(t, p, pytest.approx(c), w, ls, r, tn) for t, p, c, w, ls, r, tn in heard] == expected


    async def test_a_workflow_version_is_stored_once_and_read_back(self, log: EventLog) -> None:
        graph, manifest = b'{"1": {"class_type": "EmptyImage", "inputs": {}}}', b'description = "a"'
        first = versions.StoredVersion("solid", versions.digest(graph, manifest), graph, manifest)
        assert await log.get_version("solid", first.version) is None
        await log.remember_version(first)
        held = await log.get_version("solid", first.version)
        assert held is not None and held.created_at is not None
        assert (held.graph_json, held.manifest_toml) == (graph, manifest) and held.intact()
        await log.remember_version(first)  # again: nothing changes
        assert await log.get_version("solid", first.version) == held
        second = versions.StoredVersion("solid", versions.digest(graph, b""), graph, b"")
        await log.remember_version(second)
        await log.remember_version(versions.StoredVersion("other", first.version, graph, manifest))
        listed = await log.list_versions("solid")
        assert [v.version for v in listed] == [first.version, second.version]
        assert await log.list_versions("nothing") == []
        assert await log.get_version("other", second.version) is None


class TestInMemoryEventLog(EventLogContract):
    @pytest.fixture
    async def log(self) -> AsyncIterator[EventLog]:
        yield InMemoryEventLog()


@pytest.mark.postgres
class TestPostgresEventLog(EventLogContract):
    @pytest.fixture
    async def log(self, pg_dsn: str) -> AsyncIterator[EventLog]:
        log = await PostgresEventLog.connect(pg_dsn)
        try:
            yield log
        finally:
            await log.close()

    async def test_a_queued_notice_without_tenant_is_tenant_default(
        self, log: PostgresEventLog, pg_dsn: str
    ) -> None:
        """Rolling upgrade: an ingress of the release before tenants sends the notice without
        the tenant; the router hears a task of tenant `default`."""
        import asyncpg

        heard: list[tuple[object, ...]] = []
        caught_up: list[int] = []
        await log.listen_queued(lambda *notice: heard.append(notice))
        await log.listen_ended(lambda *_: None, lambda: caught_up.append(1))
        await eventually(lambda: caught_up, what="listening")
        conn = await asyncpg.connect(pg_dsn)
        try:
            old = orjson.dumps(["t-old", 2, 1.5, "solid", [], False]).decode()
            new = orjson.dumps(["t-new", 0, 1.5, "solid", ["gpu"], True, "acme"]).decode()
            await conn.execute("SELECT pg_notify('tasks_queued_v1', $1), pg_notify('tasks_queued_v1', $2)", old, new)
        finally:
            await conn.close()
        await eventually(lambda: len(heard) >= 2, what="two notices")
        assert heard == [
            ("t-old", 2, 1.5, "solid", [], False, "default"),
            ("t-new", 0, 1.5, "solid", ["gpu"], True, "acme"),
        ]

    async def test_database_refuses_update_and_delete(self, log: PostgresEventLog, pg_dsn: str) -> None:
        import asyncpg

        tid = str(uuid.uuid4())
        await log.append(tid, 0, [submitted()])
        await log.remember_version(versions.StoredVersion("solid", "0" * 16, b"{}", b""))
        conn = await asyncpg.connect(pg_dsn)
        try:
            for stmt in (
                "UPDATE task_events SET type = 'x'",
                "DELETE FROM task_events",
                "TRUNCATE task_events",
                "UPDATE workflow_versions SET name = 'x'",
                "DELETE FROM workflow_versions",
                "TRUNCATE workflow_versions",
            ):
                with pytest.raises(asyncpg.PostgresError, match="append-only"):
                    await conn.execute(stmt)
        finally:
            await conn.close()

    async def test_a_notice_of_the_previous_version_is_a_delivery_to_an_unknown_receiver(
        self, log: PostgresEventLog, pg_dsn: str
    ) -> None:
        import asyncpg

        heard: list[tuple[str, str | None, str | None]] = []
        caught_up: list[int] = []
        await log.listen_ended(lambda *notice: heard.append(notice), lambda: caught_up.append(1))
        await eventually(lambda: caught_up, what="listening")
        conn = await asyncpg.connect(pg_dsn)
        try:  # as the appending statement of the version before sent them: a flag, not a receiver
            await conn.execute("""SELECT pg_notify('tasks_ended_v1', '["t1", "e:1", true]')""")
            await conn.execute("""SELECT pg_notify('tasks_ended_v1', '["t2", null, false]')""")
        finally:
            await conn.close()
        await eventually(lambda: len(heard) >= 2, what="two notices")
        assert heard == [("t1", "e:1", UNKNOWN), ("t2", None, None)]

    async def test_rebuild_equals_fold(self, log: PostgresEventLog) -> None:
        tids = []
        for i in range(30):
            tid = str(uuid.uuid4())
            s = await log.append(tid, 0, [submitted(f"k{i}-{tid}")])
            if i % 2:
                s = await log.append(tid, 1, [events.TaskDispatched(endpoint="e:1", prompt_id=f"p{i}", attempt=1)], s)
            if i % 3 == 0:
                await log.append(tid, s.seq, [events.TaskFailed(code="c", message="m")], s)
            tids.append(tid)
        before = {t: await log.get(t) for t in tids}
        assert await log.rebuild_read_model() == 30
        for t in tids:
            after = await log.get(t)
            assert after == before[t] == task_state.replay(await log.read(t))

    async def test_parallel_rebuild_equals_fold_and_one_process(
        self, log: PostgresEventLog, pg_dsn: str
    ) -> None:
        tids = await _tasks_in_every_range(log, 3)
        before = {t: await log.get(t) for t in tids}
        rows = await _read_model_rows(pg_dsn)
        assert await log.rebuild_read_model(workers=3) == len(tids)
        for t in tids:
            assert await log.get(t) == before[t] == task_state.replay(await log.read(t))
        assert await _read_model_rows(pg_dsn) == rows
        assert await log.rebuild_read_model(workers=1, full=True) == len(tids)
        assert await _read_model_rows(pg_dsn) == rows
        assert await log.rebuild_read_model(workers=2, full=True) == len(tids)
        assert await _read_model_rows(pg_dsn) == rows
        assert await log.rebuild_read_model() == len(tids)  # from the fold snapshot
        assert await _read_model_rows(pg_dsn) == rows

    async def test_rebuild_of_an_empty_log_empties_the_read_model(
        self, log: PostgresEventLog, pg_dsn: str
    ) -> None:
        import asyncpg

        for workers in (1, 2):
            conn = await asyncpg.connect(pg_dsn)
            try:  # a row the log does not account for: a rebuild replaces, it does not merge
                await conn.execute(
                    "INSERT INTO tasks (task_id, workflow, status, priority, last_seq, created_at,"
                    " updated_at, state) VALUES ($1, 'w', 'queued', 0, 1, now(), now(), '{}')",
                    uuid.uuid4(),
                )
            finally:
                await conn.close()
            assert await log.rebuild_read_model(workers=workers) == 0
            assert await _read_model_rows(pg_dsn) == []

    @pytest.mark.parametrize("workers", [2, 1])
    @pytest.mark.parametrize("failure", ["database", "fold", "database then fold", "copy"])
    async def test_failed_rebuild_leaves_the_read_model_intact(
        self, log: PostgresEventLog, pg_dsn: str, workers: int, failure: str
    ) -> None:
        import asyncpg

        await _tasks_in_every_range(log, 2)
        rows = await _read_model_rows(pg_dsn)
        conn = await asyncpg.connect(pg_dsn)
        try:
            if failure.startswith("database"):  # two tasks, one client_task_id (appends refuse it)
                await conn.execute(
                    "INSERT INTO task_events (task_id, seq, type, schema_version, payload,"
                    " recorded_at) SELECT t, 1, 'task.submitted', 1, $1, now() FROM unnest($2::uuid[]) AS t",
                    orjson.dumps(submitted("dup").payload()).decode(),
                    [uuid.UUID(int=1 << 124), uuid.UUID(int=15 << 124)],
                )
            if failure.endswith("fold"):  # a stream that does not start with task.submitted
                await conn.execute(
                    "INSERT INTO task_events (task_id, seq, type, schema_version, payload,"
                    " recorded_at) VALUES ($1, 1, 'task.started', 1, '{\"prompt_id\": \"p\"}', now())",
                    uuid.UUID(int=(15 << 124) + 1),
                )
            if failure == "copy":  # the read model lacks a column: its COPY fails at once
                await conn.execute("ALTER TABLE tasks RENAME COLUMN state TO state_renamed")
        finally:
            await conn.close()
        failed = {
            "database": asyncpg.UniqueViolationError, "fold": errors.FleetError,
            "database then fold": (asyncpg.UniqueViolationError, errors.FleetError),
            "copy": asyncpg.UndefinedColumnError,
        }[failure]
        with pytest.raises(failed):
            await asyncio.wait_for(log.rebuild_read_model(workers=workers), 60)
        assert await _read_model_rows(pg_dsn) == rows


#: Text that COPY's text format escapes, and JSON too.
ODD = "tab\there, newline\nthere, back\\slash, \"quote\", é"


async def _tasks_in_every_range(log: EventLog, n: int) -> list[str]:
    """Tasks in each of `n` task-id ranges and on their bounds, with lifecycles of several
    shapes, appended in rounds (one event per task each) so their events interleave in the log."""
    tids = [t for bounds in task_id_ranges(n) for t in bounds]
    tids += [str(uuid.uuid4()) for _ in range(3 * n)]
    shapes = [
        [events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
         events.TaskStarted(prompt_id="p"),
         events.TaskProgressed(prompt_id="p", value=1, max=2, node=ODD),
         events.TaskOutputStored(prompt_id="p", index=0, node_id="9", filename=ODD, subfolder="",
                                 kind="images", content_type="image/png", size=1, sha256="ab",
                                 s3_key="k"),
         events.TaskSucceeded(prompt_id="p"),
         events.WebhookAttempted(webhook_id="w", attempt=1, status_code=500, retry_in_s=1.0),
         events.WebhookDelivered(webhook_id="w", attempt=2, status_code=204)],
        [events.TaskFailed(code="c", message=ODD, details={"why": ODD}),
         events.WebhookDead(webhook_id="w", attempts=8)],
        [events.TaskCancelRequested()],
        [],
    ]
    plans = {
        tid: [submitted(f"{ODD}-{i}" if i % 2 else None, priority=i), *shapes[i % len(shapes)]]
        for i, tid in enumerate(tids)
    }
    states: dict[str, task_state.TaskState] = {}
    for seq in range(max(map(len, plans.values()))):
        for tid, plan in plans.items():
            if seq < len(plan):
                states[tid] = await log.append(tid, seq, [plan[seq]], states.get(tid))
    return tids


async def _read_model_rows(dsn: str) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT * FROM tasks ORDER BY task_id")]
    finally:
        await conn.close()
