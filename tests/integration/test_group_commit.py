"""Group commit through a real PostgreSQL: appends that come together share one statement, and
each caller still gets its own append's result or its own error, its notices, and the very log
and read model that appending alone gives."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from comfy_fleet import errors
from comfy_fleet.log import events, task_state
from comfy_fleet.log.postgres import APPENDS_IN_FLIGHT, PostgresEventLog
from tests.support.polling import eventually

pytestmark = [pytest.mark.postgres]


def submitted(ctid: str | None = None) -> events.TaskSubmitted:
    return events.TaskSubmitted(
        workflow="solid", workflow_version="v1", params={"width": 8}, prompt={},
        callback_url="http://hooks.example/x", client_task_id=ctid,
    )


def run_events(n: int) -> list[events.Event]:
    return [events.TaskDispatched(endpoint="e", prompt_id=f"p{n}", attempt=1),
            events.TaskSucceeded(prompt_id=f"p{n}")]


async def test_appends_that_come_together_share_statements_and_match_appends_alone(
    pg_dsn: str,
) -> None:
    log = await PostgresEventLog.connect(pg_dsn)
    queued: set[str] = set()
    ended: set[str] = set()
    try:
        await log.listen_queued(lambda task_id, *_: queued.add(task_id))
        await log.listen_ended(lambda task_id, *_: ended.add(task_id))
        ids = [str(uuid.uuid4()) for _ in range(40)]
        states = await asyncio.gather(*(log.append(t, 0, [submitted(f"c{i}")])
                                        for i, t in enumerate(ids)))
        assert log._appends.statements < log._appends.appends == 40  # some went together
        ends = await asyncio.gather(*(log.append(t, s.seq, run_events(i), s)
                                      for i, (t, s) in enumerate(zip(ids, states, strict=True))))
        assert log._appends.statements < log._appends.appends == 80

        # The same appends one at a time, on tasks of their own: the same log and read model.
        alone = [str(uuid.uuid4()) for _ in ids]
        for i, t in enumerate(alone):
            s = await log.append(t, 0, [submitted(f"alone{i}")])
            await log.append(t, s.seq, run_events(i), s)
        for i, (t, a) in enumerate(zip(ids, alone, strict=True)):
            got, want = await log.get(t), await log.get(a)
            assert got == ends[i] and got.status == task_state.SUCCEEDED
            assert [(e.seq, e.event) for e in await log.read(t)] == [
                (e.seq, e.event if e.seq > 1 else submitted(f"c{i}")) for e in await log.read(a)
            ]
            assert (got.seq, got.outputs, got.status) == (want.seq, want.outputs, want.status)
        await eventually(lambda: set(ids) <= queued and set(ids) <= ended, what="every notice")
    finally:
        await log.close()


async def test_a_conflict_in_a_group_is_its_callers_alone(pg_dsn: str) -> None:
    log = await PostgresEventLog.connect(pg_dsn)
    try:
        ids = [str(uuid.uuid4()) for _ in range(20)]
        states = [await log.append(t, 0, [submitted()]) for t in ids]
        # One task's seq 2 is taken behind the callers' backs: its caller alone must hear of it.
        await log.append(ids[7], 1, [events.TaskCancelled(where="queued")], states[7])
        sent = log._appends.statements
        results = await asyncio.gather(
            *(log.append(t, s.seq, run_events(i), s) for i, (t, s) in enumerate(zip(ids, states))),
            return_exceptions=True,
        )
        # The first two alone (APPENDS_IN_FLIGHT), the other 18 as a group that failed, then
        # each of the 18 alone.
        assert APPENDS_IN_FLIGHT == 2
        assert log._appends.statements - sent == 2 + 1 + 18
        assert isinstance(results[7], errors.ConcurrencyConflict)
        assert str(ids[7]) in str(results[7])
        assert (await log.get(ids[7])).status == task_state.CANCELLED
        for i, t in enumerate(ids):
            if i != 7:
                assert results[i] == await log.get(t)
                assert (await log.get(t)).status == task_state.SUCCEEDED

        # A client_task_id taken in a group: the later caller alone is refused.
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        others = [str(uuid.uuid4()) for _ in range(5)]
        results = await asyncio.gather(
            log.append(first, 0, [submitted("same")]),
            *(log.append(t, 0, [submitted()]) for t in others),
            log.append(second, 0, [submitted("same")]),
            return_exceptions=True,
        )
        assert isinstance(results[-1], errors.DuplicateClientTaskId)
        assert all(isinstance(r, task_state.TaskState) for r in results[:-1])
        with pytest.raises(errors.TaskNotFound):
            await log.get(second)

        # One task appended to twice at once from the same seq: exactly one append wins.
        t = str(uuid.uuid4())
        s = await log.append(t, 0, [submitted()])
        results = await asyncio.gather(
            *(log.append(o, 0, [submitted()]) for o in [str(uuid.uuid4()) for _ in range(3)]),
            log.append(t, 1, run_events(1), s),
            log.append(t, 1, [events.TaskCancelled(where="queued")], s),
            return_exceptions=True,
        )
        won = [r for r in results[-2:] if isinstance(r, task_state.TaskState)]
        lost = [r for r in results[-2:] if isinstance(r, errors.ConcurrencyConflict)]
        assert len(won) == 1 and len(lost) == 1 and await log.get(t) == won[0]
    finally:
        await log.close()


async def test_a_group_whose_connection_dies_fails_every_caller_and_records_nothing(
    pg_dsn: str,
) -> None:
    """The database really goes away under a group's statement (its backend terminated while
    it waits): each of its callers hears DatabaseUnavailable, none is resent alone, and none of
    its tasks is half recorded."""
    log = await PostgresEventLog.connect(pg_dsn)
    admin = await asyncpg.connect(pg_dsn)
    holder = await asyncpg.connect(pg_dsn)

    async def blocked(count: int, besides: Sequence[int] = ()) -> list[int] | None:
        """The backends of this database waiting on a lock but `besides` (terminated, maybe
        not gone yet), once there are `count` of them."""
        pids = [r["pid"] for r in await admin.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ) if r["pid"] not in besides]
        return pids if len(pids) == count else None

    try:
        # Appends wait behind this lock (as they do behind a rebuild's last step).
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE task_events IN SHARE MODE")
        singles = [str(uuid.uuid4()) for _ in range(APPENDS_IN_FLIGHT)]
        grouped = [str(uuid.uuid4()) for _ in range(5)]
        sent = log._appends.statements
        calls = [asyncio.create_task(log.append(t, 0, [submitted()])) for t in singles + grouped]
        alone = await eventually(
            lambda: blocked(APPENDS_IN_FLIGHT), what="the appends sent alone waiting on the lock"
        )
        for pid in alone:  # the first ones fail: room for the group, which then waits too
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await eventually(
            lambda: all(c.done() for c in calls[:APPENDS_IN_FLIGHT]), what="the first ones failed"
        )
        (group_pid,) = await eventually(
            lambda: blocked(1, alone), what="the group's one statement waiting on the lock"
        )
        await admin.fetchval("SELECT pg_terminate_backend($1)", group_pid)
        # Bounded: a group resent alone would wait on the lock for good.
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)
        await tx.rollback()

        assert all(isinstance(r, errors.DatabaseUnavailable) for r in results), results
        assert log._appends.statements - sent == APPENDS_IN_FLIGHT + 1  # the group not resent
        for t in singles + grouped:
            with pytest.raises(errors.TaskNotFound):
                await log.get(t)
            assert await log.read(t) == []
    finally:
        await holder.close()
        await admin.close()
        await log.close()
