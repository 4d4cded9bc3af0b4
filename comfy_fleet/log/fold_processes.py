"""Method "fold" of a full rebuild (comfy_fleet/log/rebuild.py): every task folded in Python
(`LogFold`), in N processes, each over one range of task ids as of one exported snapshot. Each
reads its range with `COPY ... TO STDOUT`, ordered by (task_id, seq), folds each task with
`task_state.apply` (the fold, in place) and sends the rows, as COPY text, through a pipe to the
caller's COPY. With N = 1 the fold runs in the caller's process."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from comfy_fleet import errors

from comfy_fleet.log.log_fold import LogFold
from comfy_fleet.log.sql import queries

#: Bytes of rows a fold sends at a time.
CHUNK = 1 << 18

#: A fold's reading transaction: the text COPY writes (times in ISO and UTC, which `LogFold`
#: parses), no time limit, and the primary key's index scan: it streams from the first row (a
#: sort of the range would hold the fold back until it ends) and needs no memory; the folds
#: are the parallelism.
_FOLD_SESSION = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL statement_timeout = 0;"
    " SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0;"
    " SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"
)
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


async def fold_range(
    dsn: str, snapshot: str, first: str, last: str, send: Callable[[bytes], Awaitable[None]]
) -> int:
    """Fold the tasks with ids in [first, last] as of `snapshot` (`pg_export_snapshot()`), sending
    their read-model rows in chunks of about CHUNK bytes; returns the number of tasks."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    fold = LogFold()
    pending: list[bytes] = []
    size = 0
    failed: list[BaseException] = []

    async def sink(data: bytes) -> None:
        nonlocal size
        if failed:
            return
        try:
            rows = fold.feed(data)
            if rows:
                pending.append(rows)
                size += len(rows)
                if size >= CHUNK:
                    await send(b"".join(pending))
                    pending.clear()
                    size = 0
        except BaseException as exc:
            # asyncpg's COPY TO does not survive an error raised by its output (it may wait for
            # ever): keep the error, drop the connection, and raise it once the COPY has returned.
            failed.append(exc)
            conn.terminate()

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        await conn.execute(_FOLD_SESSION)
        await conn.copy_from_query(queries["select_log_range"], first, last, output=sink)
    except BaseException as exc:
        conn.terminate()  # ends the read-only transaction
        raise (failed[0] if failed else exc) from None
    if failed:
        raise failed[0]
    await conn.close()  # ends the read-only transaction
    pending.append(fold.finish())
    rows = b"".join(pending)
    if rows:
        await send(rows)
    return fold.tasks


def _fold_process(
    dsn: str, snapshot: str, first: str, last: str, pipe: multiprocessing.connection.Connection
) -> None:
    """A fold process: sends b"D" + rows, then b"F" + the number of tasks, or b"E" + the error."""

    async def send(rows: bytes) -> None:
        pipe.send_bytes(b"D" + rows)

    try:
        tasks = asyncio.run(fold_range(dsn, snapshot, first, last, send))
        pipe.send_bytes(b"F%d" % tasks)
    except BaseException:
        pipe.send_bytes(b"E" + traceback.format_exc().encode())
    finally:
        pipe.close()


# --- all ranges: one stream of rows -----------------------------------------------------------

async def _rows_in_process(
    dsn: str, snapshot: str, first: str, last: str, tasks: list[int]
) -> AsyncIterator[bytes]:
    """The rows of one fold in this process (`tasks` gets its number of tasks)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)

    async def fold() -> None:
        try:
            tasks.append(await fold_range(dsn, snapshot, first, last, queue.put))
        finally:
            await queue.put(None)

    folding = asyncio.create_task(fold())
    try:
        while (rows := await queue.get()) is not None:
            yield rows
        await folding  # its error, if any
    finally:
        folding.cancel()
        with contextlib.suppress(BaseException):
            await folding


def _receive(
    pipes: list[multiprocessing.connection.Connection],
) -> list[tuple[multiprocessing.connection.Connection, bytes | None]]:
    """Wait for some of the pipes; one message from each that has one (None: closed)."""
    got: list[tuple[multiprocessing.connection.Connection, bytes | None]] = []
    for pipe in multiprocessing.connection.wait(pipes):
        assert isinstance(pipe, multiprocessing.connection.Connection)
        try:
            got.append((pipe, pipe.recv_bytes()))
        except EOFError:
            got.append((pipe, None))
    return got


async def _rows_from_processes(
    dsn: str, snapshot: str, ranges: list[tuple[str, str]], tasks: list[int]
) -> AsyncIterator[bytes]:
    """The rows of a fold process per range, as they come (`tasks` gets their numbers of tasks);
    closing it ends the processes."""
    spawn = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[multiprocessing.connection.Connection] = []
    try:
        for i, (first, last) in enumerate(ranges):
            receiver, sender = spawn.Pipe(duplex=False)
            pipes.append(receiver)
            proc = spawn.Process(
                target=_fold_process, args=(dsn, snapshot, first, last, sender),
                name=f"rebuild-fold-{i}", daemon=True,
            )
            proc.start()
            procs.append(proc)
            sender.close()  # the child holds it: its exit is our EOF
        names = {pipe: proc.name for pipe, proc in zip(pipes, procs, strict=True)}
        running = list(pipes)
        while running:
            for pipe, message in await asyncio.to_thread(_receive, running):
                if message is None:
                    raise errors.FleetError(f"rebuild: {names[pipe]} ended without a result")
                kind, body = message[:1], message[1:]
                if kind == b"D":
                    yield body
                elif kind == b"F":
                    tasks.append(int(body))
                    running.remove(pipe)
                else:
                    error = body.decode(errors="replace")
                    raise errors.FleetError(f"rebuild: {names[pipe]} failed:\n{error}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.join)
        for pipe in pipes:
            pipe.close()


def rows(
    dsn: str, snapshot: str, ranges: list[tuple[str, str]], tasks: list[int]
) -> AsyncIterator[bytes]:
    """The read-model rows (COPY text) of every task with an id in `ranges`, as of `snapshot`:
    one fold process per range (in this process for one range); `tasks` gets their numbers of
    tasks. Closing it ends the processes."""
    if len(ranges) == 1:
        return _rows_in_process(dsn, snapshot, *ranges[0], tasks)
    return _rows_from_processes(dsn, snapshot, ranges, tasks)
