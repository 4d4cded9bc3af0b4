"""Recompute the read model (`tasks`) from the log (`rebuild`; the command is
`python -m comfy_fleet.cli.rebuild [DSN] [--full] [--method sql|fold] [--workers N]`), and keep
the fold snapshot it starts from up to date (`refresh_fold_snapshot`, the command's
`--snapshot-only`).

The fold snapshot (comfy_fleet/log/fold_snapshot.py) holds every task's row as the fold of its
events up to a horizon of the log. A rebuild:
1. takes the advisory lock REBUILD_LOCK (one rebuild or refresh at a time);
2. folds every task from its events into the snapshot's rows when the snapshot does not count
   (none, another fold version's, `full=True`, or more than LONG_TAIL of the log after its
   horizon): method "sql" (the default) has PostgreSQL fold the common lifecycles in N
   sessions (comfy_fleet/log/rebuild_sql.py), method "fold" folds every task in Python in N
   processes (comfy_fleet/log/fold_processes.py); N = `workers`, one per core by default;
3. in one transaction (REPEATABLE READ) that first takes `lock_log` (appends in flight commit
   first, new ones wait for its end, so it sees the whole log): folds in Python what the rows
   lack (the events after the horizon, onto their tasks' rows; after step 2, the tasks the SQL
   left), makes the read model the rows (`fold_snapshot.to_read_model`: deletes the read-model
   rows that are not byte for byte the fold, inserts the fold's rows then missing, so a sound
   read model costs a comparison and no writes), and saves the snapshot with the log's last
   position as its horizon. It commits only if every task got its row: readers see the old read
   model until the commit, and a failure leaves it intact.
So the read model is the fold of the whole log either way; tests/integration/
test_rebuild_snapshot.py and test_rebuild_sql.py show it equals `replay` of every task.

Run it with the service stopped, as before: the service keeps state of its own beside the read
model. If it runs, its appends wait for step 3 (they do not race with it).

A refresh (`refresh_fold_snapshot`) is steps 1, 2 and a step 3 without the read model and
without holding appends: it takes its horizon at a barrier (`fold_snapshot.barrier`) before its
transaction. Safe while the service runs; meant to be run periodically, so that the next
rebuild's tail is short.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass

import asyncpg

from comfy_fleet import errors

from comfy_fleet.log import fold_processes, fold_snapshot, rebuild_sql
from comfy_fleet.log.log_fold import COLUMNS
from comfy_fleet.log.sql import queries

#: How a full fold computes the rows: "sql" (the default) has PostgreSQL fold the common
#: lifecycles in `workers` sessions and folds the rest in Python in this process; "fold" folds
#: every task in Python, in `workers` processes.
METHODS = ("sql", "fold")

#: A snapshot with more than this share of the log's positions after its horizon is refolded
#: from scratch: the tail is folded in Python in one process, which costs more per event than
#: the parallel full fold beyond about this share.
LONG_TAIL = 0.3

#: Why a rebuild folded every task from its events (`Rebuilt.full`).
ASKED, NO_SNAPSHOT, OTHER_VERSION, LONG = (
    "asked", "no fold snapshot", "the fold snapshot is of another fold version",
    f"more than {LONG_TAIL:.0%} of the log is after the fold snapshot",
)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild (or a refresh of the fold snapshot) did."""

    #: rows written to the read model (a refresh: rows of the snapshot it folded anew)
    tasks: int
    #: why every task was folded from its events; None: the fold snapshot was used
    full: str | None
    #: the last step's fold: tasks and events the rows lacked
    tail_tasks: int
    tail_events: int
    #: the fold snapshot's horizon now
    horizon: int
    #: read-model rows that were not the fold (deleted), and rows written (a refresh: 0, 0)
    removed: int
    written: int


def task_id_ranges(n: int) -> list[tuple[str, str]]:
    """The task-id space (uuids in PostgreSQL's order) in `n` contiguous ranges of equal width,
    as inclusive (first, last) bounds. Task ids are uuid4, so the ranges hold about as many
    tasks each."""
    if n < 1:
        raise ValueError(f"task_id_ranges: n must be at least 1, not {n}")
    starts = [(i << 128) // n for i in range(n + 1)]
    return [(str(uuid.UUID(int=a)), str(uuid.UUID(int=b - 1))) for a, b in zip(starts, starts[1:])]


async def _full_fold(dsn: str, conn: asyncpg.Connection, n: int, method: str) -> None:
    """Replace the snapshot's rows by the fold of every task as of one snapshot of the log (the
    SQL's share only, for "sql"); they count once the caller saves the snapshot."""
    await fold_snapshot.forget(conn)
    ranges = task_id_ranges(n)
    if method == "sql":
        await rebuild_sql.fold_plain(dsn, ranges)
    else:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        await conn.execute("SET LOCAL statement_timeout = 0")
        tasks: list[int] = []
        async with contextlib.aclosing(fold_processes.rows(dsn, snapshot, ranges, tasks)) as rows:
            await conn.copy_to_table(
                "fold_snapshot_rows", source=rows, columns=list(COLUMNS), format="text"
            )
        await conn.execute("COMMIT")
    await conn.execute(queries["analyze_fold_snapshot_rows"])


async def _start(
    dsn: str, conn: asyncpg.Connection, workers: int | None, method: str, full: bool
) -> tuple[int, str | None]:
    """Steps 1 and 2: returns the horizon to fold the tail from and why every task was folded
    (None: the snapshot counts)."""
    if method not in METHODS:
        raise ValueError(f"rebuild: method must be one of {METHODS}, not {method!r}")
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", rebuild_sql.REBUILD_LOCK):
        raise errors.FleetError(
            "rebuild: another rebuild (or refresh of the fold snapshot) is running"
        )
    snapshot = await fold_snapshot.read(conn)
    why = (
        ASKED if full else NO_SNAPSHOT if snapshot is None
        else OTHER_VERSION if not snapshot.current else None
    )
    if snapshot is not None and why is None:
        end = await conn.fetchval(queries["log_end"])
        if end - snapshot.horizon > LONG_TAIL * end:
            why = LONG
    if why is None:
        assert snapshot is not None
        return snapshot.horizon, None
    n = max(1, workers if workers is not None else os.cpu_count() or 1)
    await _full_fold(dsn, conn, n, method)
    return 0, why


async def rebuild(
    dsn: str, workers: int | None = None, method: str = "sql", *, full: bool = False
) -> Rebuilt:
    """Replace the read model by the fold of the log, from the fold snapshot unless `full`.
    `workers` (default: one per core) and `method` (METHODS) tell how a full fold runs. See the
    module docstring."""
    conn = await asyncpg.connect(dsn)
    try:
        horizon, why = await _start(dsn, conn, workers, method, full)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await conn.execute(queries["lock_log"])
        tail = await fold_snapshot.fold_tail(conn, horizon)
        end = await conn.fetchval(queries["log_end"])
        removed, written = await fold_snapshot.to_read_model(conn)
        tasks = await conn.fetchval(queries["count_fold_snapshot_rows"])
        await fold_snapshot.save(conn, end)
        await conn.execute("COMMIT")
    except BaseException:
        # Disconnecting rolls the transaction back (and frees the advisory lock). Not ROLLBACK:
        # after a COPY that failed in its output, asyncpg never answers again.
        conn.terminate()
        raise
    finally:
        await conn.close()
    return Rebuilt(tasks, why, tail.tasks, tail.events, end, removed, written)


async def rebuild_read_model(
    dsn: str, workers: int | None = None, method: str = "sql", *, full: bool = False
) -> int:
    """`rebuild`, returning the number of tasks."""
    return (await rebuild(dsn, workers, method, full=full)).tasks


async def refresh_fold_snapshot(
    dsn: str, workers: int | None = None, method: str = "sql", *, full: bool = False
) -> Rebuilt:
    """Bring the fold snapshot up to date with the log (a full fold when it does not count, or
    `full`), leaving the read model alone. Safe while the service runs: appends wait only for
    the barrier that fixes its horizon (at most fold_snapshot.BARRIER_TIMEOUT)."""
    conn = await asyncpg.connect(dsn)
    try:
        horizon, why = await _start(dsn, conn, workers, method, full)
        end = await fold_snapshot.barrier(conn)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        tail = await fold_snapshot.fold_tail(conn, horizon)
        await fold_snapshot.save(conn, horizon if end is None else end)
        tasks = await conn.fetchval(queries["count_fold_snapshot_rows"])
        await conn.execute("COMMIT")
    except BaseException:
        conn.terminate()
        raise
    finally:
        await conn.close()
    return Rebuilt(tasks, why, tail.tasks, tail.events, horizon if end is None else end, 0, 0)
