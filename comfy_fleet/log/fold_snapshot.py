"""The fold snapshot: every task's read-model row as the fold of its events up to its last_seq,
kept in `fold_snapshot_rows` with a description in `fold_snapshot` (migrations/
0007_fold_snapshot.sql): the fold version that wrote it and its horizon, a log position at or
below which every event is folded into the rows. A rebuild folds only what the rows lack
(`fold_tail`) and copies them into the read model (comfy_fleet/log/rebuild.py).

It is derived from the log alone (the rebuild and `refresh_fold_snapshot` write it, nothing
else) and read by rebuilds alone: never a source of truth. It counts only while its
`fold_version` is FOLD_VERSION, the digest of the code that turns events into rows, so a release
that changes the fold refolds the whole log once. UNLOGGED: a crash empties it.

Why the horizon is safe: positions come from a sequence and an append can commit after a later
one, so "the events after the last position I saw" could miss one that committed late. The
horizon is therefore taken under `lock_log` (SHARE on task_events: every append in flight has
committed, none starts until the lock is released), and the transaction that folds reads a
snapshot taken after it: it sees every event at or below the horizon. It may see later ones
too; they are folded, and each row's last_seq says so, so the next tail skips them.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import asyncpg

from comfy_fleet.delivery import ids
from comfy_fleet.log import cancel, event_log, events, log_fold, task_state
from comfy_fleet.log.log_fold import COLUMNS, LogFold
from comfy_fleet.log.sql import queries

#: The code that turns a task's events into its read-model row: a change of any of it changes
#: FOLD_VERSION, and the snapshot no longer counts. Whole modules, deliberately coarse: a
#: comment's change costs one full fold, a missed change would cost wrong rows.
FOLD_MODULES = (events, task_state, cancel, ids, event_log, log_fold)
#: The SQL of the fold: the rows it writes, and what it hands to the Python fold.
FOLD_QUERIES = ("rebuild_plain_tasks", "select_log_unfolded")

#: How long a refresh waits for the appends in flight before it keeps the old horizon.
BARRIER_TIMEOUT = "1s"

#: The tail's transaction: the text COPY writes (times in ISO and UTC, which `LogFold` parses),
#: memory to sort the tail, no time limit.
_TAIL_SESSION = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL statement_timeout = 0;"
    " SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"
)


@cache
def fold_version() -> str:
    """The digest of FOLD_MODULES' source files and FOLD_QUERIES' text."""
    digest = hashlib.sha256()
    for module in FOLD_MODULES:
        assert module.__file__ is not None
        source = Path(module.__file__).read_bytes()
        digest.update(b"%s %d\n" % (module.__name__.encode(), len(source)))
        digest.update(source)
    for name in FOLD_QUERIES:
        text = queries[name].encode()
        digest.update(b"%s %d\n" % (name.encode(), len(text)))
        digest.update(text)
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Snapshot:
    """The description of the fold snapshot."""

    fold_version: str
    horizon: int
    taken_at: datetime

    @property
    def current(self) -> bool:
        """Folded by this code: its rows count."""
        return self.fold_version == fold_version()


@dataclass(frozen=True)
class Tail:
    """What `fold_tail` folded: tasks (each onto its row, or from its first event) and events."""

    tasks: int
    events: int


async def read(conn: asyncpg.Connection) -> Snapshot | None:
    row = await conn.fetchrow(queries["select_fold_snapshot"])
    return None if row is None else Snapshot(row["fold_version"], row["horizon"], row["taken_at"])


async def forget(conn: asyncpg.Connection) -> None:
    """Drop the description and empty the rows (outside a transaction: each commits), before a
    full fold writes them anew."""
    await conn.execute(queries["forget_fold_snapshot"])
    await conn.execute(queries["empty_fold_snapshot_rows"])


async def save(conn: asyncpg.Connection, horizon: int) -> None:
    """In the transaction that brought the rows up to date: they are this code's fold of every
    event at or below `horizon`."""
    await conn.execute(queries["save_fold_snapshot"], fold_version(), horizon)


async def barrier(conn: asyncpg.Connection) -> int | None:
    """The log's last position once every append in flight has committed (a horizon for a
    snapshot taken after this returns); None when appends held the lock past BARRIER_TIMEOUT
    (a long transaction that appended): the caller keeps its old horizon, which is as correct."""
    await conn.execute("BEGIN")
    try:
        await conn.execute(queries["limit_lock_wait"], BARRIER_TIMEOUT)
        await conn.execute(queries["lock_log"])
        end: int = await conn.fetchval(queries["log_end"])
    except asyncpg.LockNotAvailableError:
        await conn.execute("ROLLBACK")
        return None
    await conn.execute("COMMIT")
    return end


async def fold_tail(conn: asyncpg.Connection, horizon: int) -> Tail:
    """In the caller's transaction (REPEATABLE READ, its snapshot taken after `horizon` was
    established): fold every event after position `horizon` that the rows do not cover onto
    its task's row (`select_log_unfolded`, `LogFold`) and replace those rows. From horizon 0,
    every task without a row is folded from its first event. The rows wait in a temporary file
    (in memory up to 64 MiB): one connection cannot COPY out and in at once."""
    await conn.execute(_TAIL_SESSION)
    fold = LogFold()
    failed: list[BaseException] = []
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:

        async def sink(data: bytes) -> None:
            if failed:
                return
            try:
                spool.write(fold.feed(data))
            except BaseException as exc:
                # asyncpg's COPY TO does not survive an error raised by its output (it may wait
                # for ever): keep the error and drop the connection (rolling back).
                failed.append(exc)
                conn.terminate()

        try:
            await conn.copy_from_query(queries["select_log_unfolded"], horizon, output=sink)
        except BaseException as exc:
            raise (failed[0] if failed else exc) from None
        if failed:
            raise failed[0]
        spool.write(fold.finish())
        if fold.task_ids:
            await conn.execute(queries["delete_fold_snapshot_rows"], fold.task_ids)
            spool.seek(0)
            await conn.copy_to_table(
                "fold_snapshot_rows", source=spool, columns=list(COLUMNS), format="text"
            )
    return Tail(fold.tasks, fold.events)


async def to_read_model(conn: asyncpg.Connection) -> tuple[int, int]:
    """In the rebuild's transaction, once the rows are up to date: make the read model the rows,
    rewriting only the read-model rows that differ from them. Returns (rows deleted: not the
    fold, rows inserted)."""
    await conn.execute(queries["prefer_index_joins"])
    deleted = await conn.execute(queries["delete_read_model_rows_not_folded"])
    inserted = await conn.execute(queries["insert_read_model_rows_missing"])
    return int(deleted.split()[-1]), int(inserted.split()[-1])
