"""Method "sql" of a full rebuild (comfy_fleet/log/rebuild.py): PostgreSQL folds the common
lifecycles itself (`rebuild_plain_tasks`), one task-id range per session, all as of one
snapshot, into the fold snapshot's rows (`fold_snapshot_rows`: UNLOGGED, so no WAL). The tasks
it leaves are folded in Python afterwards, with the events appended since (`fold_snapshot.
fold_tail` from position 0)."""

from __future__ import annotations

import asyncio

import asyncpg

from comfy_fleet.log.sql import queries

#: Arbitrary, fixed: the advisory lock a rebuild or a refresh of the fold snapshot holds (both
#: write the snapshot's rows).
REBUILD_LOCK = 0x7265_6275_696C_64

#: A fold session: no JIT (compiling this query costs more than it saves), memory for its
#: per-task aggregate, no time limit.
_SESSION = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL statement_timeout = 0"


async def _fold(dsn: str, snapshot: str, first: str, last: str) -> int:
    """Fold the tasks in [first, last] that the SQL folds; returns their number."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        await conn.execute(_SESSION)
        status = await conn.execute(queries["rebuild_plain_tasks"], first, last)
        await conn.execute("COMMIT")
        return int(status.split()[-1])
    except BaseException:
        conn.terminate()  # rolls back
        raise
    finally:
        await conn.close()


async def fold_plain(dsn: str, ranges: list[tuple[str, str]]) -> int:
    """Into the (emptied) fold snapshot's rows, the rows the SQL folds, from the log as of one
    snapshot, in one session per range. Returns how many."""
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = await holder.fetchval("SELECT pg_export_snapshot()")
        async with asyncio.TaskGroup() as group:
            folds = [group.create_task(_fold(dsn, snapshot, a, b)) for a, b in ranges]
    except BaseException:
        holder.terminate()
        raise
    finally:
        await holder.close()  # ends the snapshot's transaction
    return sum(f.result() for f in folds)
