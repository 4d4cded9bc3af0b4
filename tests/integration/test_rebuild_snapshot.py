"""The rebuild from the fold snapshot against the real PostgreSQL: with events appended after the
snapshot (tasks continued from their snapshot rows, and new ones), the read model equals
`replay` of every task, of every lifecycle (batches, reruns, requeues, cancels, failures,
recovered outputs, webhook redeliveries), and equals the full refold row for row. A snapshot of
another fold version, one without its description, or one too far behind is ignored for a full
fold, as is any snapshot with `full`. Refreshing it while tasks are appended loses nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from comfy_fleet.log import events, fold_snapshot, rebuild, task_state
from comfy_fleet.log.events import StoredEvent
from comfy_fleet.log.postgres import PostgresEventLog
from tests.integration.test_rebuild_sql import (
    assert_rows_are_the_fold,
    every_lifecycle,
    read_model_rows,
    write_log,
)

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def _cut(
    log: list[list[StoredEvent]], seed: int
) -> tuple[list[list[StoredEvent]], list[list[StoredEvent]]]:
    """Each stream cut in two, at a place that varies with the stream and `seed`: the events
    before the snapshot and those after it. Every fifth stream starts after the snapshot; every
    seventh ends before it."""
    before, after = [], []
    for k, stream in enumerate(log):
        at = 0 if k % 5 == seed % 5 else len(stream) if k % 7 == 0 else 1 + (k + seed) % len(stream)
        if stream[:at]:
            before.append(stream[:at])
        if stream[at:]:
            after.append(stream[at:])
    return before, after


async def _sql(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


@pytest.mark.parametrize("method", rebuild.METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_rebuild_from_the_snapshot_and_the_events_after_it_is_the_fold(
    pg_dsn: str, method: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild, "LONG_TAIL", 1.0)  # about half the events come after it
    log = every_lifecycle()
    before, after = _cut(log, seed)
    await write_log(pg_dsn, before)
    refreshed = await rebuild.refresh_fold_snapshot(pg_dsn, workers=2, method=method)
    assert refreshed.full == rebuild.NO_SNAPSHOT and refreshed.tasks == len(before)
    await write_log(pg_dsn, after)

    done = await rebuild.rebuild(pg_dsn)
    assert done.full is None  # the snapshot counted
    assert (done.tasks, done.tail_tasks, done.tail_events) == (
        len(log), len(after), sum(map(len, after)))
    assert (done.removed, done.written) == (0, len(log))  # the log was written, not the tasks
    continued = {s[0].task_id for s in before} & {s[0].task_id for s in after}
    assert continued and len(continued) < len(after)  # tasks both continued and new
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), log)
    from_snapshot = await read_model_rows(pg_dsn)

    again = await rebuild.rebuild(pg_dsn)  # the snapshot now covers the whole log
    assert (again.full, again.tail_tasks, again.tail_events) == (None, 0, 0)
    assert (again.removed, again.written) == (0, 0)  # nothing to rewrite
    assert await read_model_rows(pg_dsn) == from_snapshot

    full = await rebuild.rebuild(pg_dsn, method=method, full=True)
    assert (full.full, full.tasks, full.removed, full.written) == (rebuild.ASKED, len(log), 0, 0)
    assert await read_model_rows(pg_dsn) == from_snapshot


async def test_events_after_a_refresh_are_folded_onto_their_rows_once(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild, "LONG_TAIL", 1.0)
    # Two refreshes in turn, each with events after it: the second folds only its own tail.
    log = every_lifecycle()
    first, rest = _cut(log, 3)
    middle, last = _cut(rest, 4)
    await write_log(pg_dsn, first)
    await rebuild.refresh_fold_snapshot(pg_dsn)
    await write_log(pg_dsn, middle)
    tail = await rebuild.refresh_fold_snapshot(pg_dsn)
    assert (tail.full, tail.tail_events) == (None, sum(map(len, middle)))
    await write_log(pg_dsn, last)
    done = await rebuild.rebuild(pg_dsn)
    assert (done.full, done.tail_events) == (None, sum(map(len, last)))
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), log)


@pytest.mark.parametrize("spoiled", ["older fold version", "no description", "asked"])
async def test_a_snapshot_that_does_not_count_is_refolded_from_the_log(
    pg_dsn: str, spoiled: str
) -> None:
    log = every_lifecycle()
    await write_log(pg_dsn, log)
    await rebuild.refresh_fold_snapshot(pg_dsn)
    # Rows that are not the fold: a rebuild that used them would show it.
    await _sql(pg_dsn, "UPDATE fold_snapshot_rows SET status = 'bogus',"
                       " state = state || '{\"status\": \"bogus\"}'")
    if spoiled == "older fold version":
        await _sql(pg_dsn, "UPDATE fold_snapshot SET fold_version = 'an older fold'")
    elif spoiled == "no description":  # as a crash in the middle of a full fold leaves it
        await _sql(pg_dsn, "DELETE FROM fold_snapshot")
    done = await rebuild.rebuild(pg_dsn, full=spoiled == "asked")
    assert done.full == {"older fold version": rebuild.OTHER_VERSION,
                         "no description": rebuild.NO_SNAPSHOT, "asked": rebuild.ASKED}[spoiled]
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), log)
    conn = await asyncpg.connect(pg_dsn)
    try:  # and the snapshot is the fold again, of this code
        snapshot = await fold_snapshot.read(conn)
        assert snapshot is not None and snapshot.current
        bogus = "SELECT count(*) FROM fold_snapshot_rows WHERE status = 'bogus'"
        assert await conn.fetchval(bogus) == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("full", [False, True], ids=["from the snapshot", "full"])
async def test_a_rebuild_rewrites_only_the_rows_that_are_not_the_fold(
    pg_dsn: str, full: bool
) -> None:
    log = every_lifecycle()
    await write_log(pg_dsn, log)  # events only: the read model is empty
    first = await rebuild.rebuild(pg_dsn)
    assert (first.removed, first.written) == (0, len(log))
    states = [task_state.replay(stream) for stream in log]
    once = next(s.task_id for s in states if s is not None and s.attempt == 1)
    ids = [once] + sorted(s.task_id for s in states if s and s.client_task_id and s.task_id != once)
    conn = await asyncpg.connect(pg_dsn)
    try:
        # A row changed by a hair (attempt 1 written 1.0: equal as JSON, not byte for byte), one
        # changed plainly, two tasks' client ids swapped (unique per tenant: only deleting both
        # before inserting both gets through), a row missing, and a row of no task of the log.
        await conn.execute(
            "UPDATE tasks SET state = jsonb_set(state, '{attempt}', '1.0') WHERE task_id = $1",
            uuid.UUID(ids[0]))
        await conn.execute("UPDATE tasks SET priority = priority + 1 WHERE task_id = $1",
                           uuid.UUID(ids[1]))
        await conn.execute(
            "UPDATE tasks SET client_task_id = CASE task_id WHEN $1 THEN $3 ELSE $4 END"
            " WHERE task_id IN ($1, $2)", uuid.UUID(ids[2]), uuid.UUID(ids[3]),
            "swap-a", "swap-b")
        await conn.execute(
            "UPDATE tasks SET client_task_id = CASE task_id WHEN $1 THEN"
            " (SELECT state->>'client_task_id' FROM tasks WHERE task_id = $2) ELSE"
            " (SELECT state->>'client_task_id' FROM tasks WHERE task_id = $1) END"
            " WHERE task_id IN ($1, $2)", uuid.UUID(ids[2]), uuid.UUID(ids[3]))
        await conn.execute("DELETE FROM tasks WHERE task_id = $1", uuid.UUID(ids[4]))
        await conn.execute(
            "INSERT INTO tasks SELECT $1, 'x', workflow, status, priority, webhook, last_seq,"
            " created_at, updated_at, state, tenant FROM tasks WHERE task_id = $2",
            uuid.uuid4(), uuid.UUID(ids[5]))
    finally:
        await conn.close()
    done = await rebuild.rebuild(pg_dsn, full=full)
    assert (done.removed, done.written) == (5, 5)
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), log)


async def test_a_long_tail_is_refolded_from_the_log(pg_dsn: str) -> None:
    log = every_lifecycle()
    await write_log(pg_dsn, log[:10])
    await rebuild.refresh_fold_snapshot(pg_dsn)
    await write_log(pg_dsn, log[10:])
    done = await rebuild.rebuild(pg_dsn)
    assert done.full == rebuild.LONG
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), log)


async def test_a_failed_rebuild_keeps_the_read_model_and_the_snapshot(pg_dsn: str) -> None:
    from comfy_fleet import errors

    log = every_lifecycle()
    await write_log(pg_dsn, log)
    await rebuild.rebuild(pg_dsn)
    rows = await read_model_rows(pg_dsn)
    horizon = await _sql(pg_dsn, "SELECT horizon FROM fold_snapshot")
    stream = log[2]  # continued with a gap: seq 2 again
    await write_log(pg_dsn, [[StoredEvent(stream[0].task_id, len(stream) + 2, stream[1].event,
                                          stream[-1].at)]])
    with pytest.raises(errors.FleetError, match="follows"):
        await rebuild.rebuild(pg_dsn)
    assert await read_model_rows(pg_dsn) == rows
    assert await _sql(pg_dsn, "SELECT horizon FROM fold_snapshot") == horizon


async def test_refreshes_while_tasks_are_appended_miss_no_event(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild, "LONG_TAIL", 1.0)  # the log grows from nothing
    log = await PostgresEventLog.connect(pg_dsn)
    stop = asyncio.Event()
    tids: list[str] = []

    async def appender(k: int) -> None:
        while not stop.is_set():
            tid, pid = str(uuid.uuid4()), f"p{k}"
            tids.append(tid)
            state = await log.append(tid, 0, [events.TaskSubmitted(
                workflow="w", workflow_version="v", params={"k": k}, client_task_id=tid)])
            for ev in (events.TaskDispatched(endpoint="e:1", prompt_id=pid, attempt=1),
                       events.TaskStarted(prompt_id=pid), events.TaskSucceeded(prompt_id=pid)):
                state = await log.append(tid, state.seq, [ev], state)

    try:
        appending = [asyncio.create_task(appender(k)) for k in range(4)]
        refreshed = [await rebuild.refresh_fold_snapshot(pg_dsn) for _ in range(4)]
        stop.set()
        await asyncio.gather(*appending)
        assert refreshed[0].full == rebuild.NO_SNAPSHOT and refreshed[-1].full is None
        assert [r.horizon for r in refreshed] == sorted(r.horizon for r in refreshed)
        done = await rebuild.rebuild(pg_dsn)
        assert done.full is None and done.tasks == len(tids)
        for tid in tids:
            assert await log.get(tid) == task_state.replay(await log.read(tid))
    finally:
        stop.set()
        await log.close()


async def test_the_command_rebuilds_from_the_snapshot_or_in_full(pg_dsn: str) -> None:
    async def run(*args: str) -> str:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "comfy_fleet.cli.rebuild", pg_dsn, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
        )
        return done.stdout

    await write_log(pg_dsn, every_lifecycle())
    n = len(every_lifecycle())
    assert (await run("--snapshot-only")).startswith(
        f"fold snapshot: {n} task(s): every task folded from its events (no fold snapshot)")
    assert (await run()).startswith(
        f"rebuilt {n} task(s) from the log: from the fold snapshot and the 0 event(s) of 0 task(s)")
    assert (await run("--full", "--method", "fold", "--workers", "2")).startswith(
        f"rebuilt {n} task(s) from the log: every task folded from its events (asked)")
