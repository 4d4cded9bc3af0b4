"""The SQL half of `rebuild_read_model(method="sql")`: PostgreSQL folds the common lifecycles
itself (`rebuild_plain_tasks`), one task-id range per session, all as of one snapshot, into the
UNLOGGED `task_rebuild_stage` (no WAL, no index: the cheap place to write in parallel). The
rebuild's transaction then moves the staged rows into the read model in one INSERT."""

from __future__ import annotations

import asyncio

import asyncpg

from comfy_fleet.log.sql import queries

#: Arbitrary, fixed: the advisory lock a rebuild holds (two rebuilds would share the stage).
REBUILD_LOCK = 0x7265_6275_696C_64

#: A fold session: no JIT (compiling this query costs more than it saves), memory for its
#: per-task aggregate, no time limit.
_SESSION = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL statement_timeout = 0"


async def _fold(dsn: str, snapshot: str, first: str, last: str) -> int:
    """Stage the rows of the tasks in [first, last] that the SQL folds; returns their number."""
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


async def stage(dsn: str, conn: asyncpg.Connection, ranges: list[tuple[str, str]]) -> tuple[int, tuple[int, int]]:
    """Empty the stage (with `conn`, outside a transaction), then fill it from the log as of one
    snapshot, in one session per range. Returns (rows staged, `log_extent` of that snapshot):
    the caller checks the log still has that extent where it writes, since its own snapshot is
    a later one (it must see the staged rows)."""
    await conn.execute(queries["empty_rebuild_stage"])
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = await holder.fetchval("SELECT pg_export_snapshot()")
        async with asyncio.TaskGroup() as group:
            extent = group.create_task(holder.fetchrow(queries["log_extent"]))
            folds = [group.create_task(_fold(dsn, snapshot, a, b)) for a, b in ranges]
    except BaseException:
        holder.terminate()
        raise
    finally:
        await holder.close()  # ends the snapshot's transaction
    row = extent.result()
    return sum(f.result() for f in folds), (row["events"], row["last"])
