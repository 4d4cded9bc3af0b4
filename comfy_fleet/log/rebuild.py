"""Recompute the read model (`tasks`) from the log (`rebuild_read_model`; the command is
`python -m comfy_fleet.cli.rebuild [DSN] [--method sql|fold] [--workers N]`).

Run it with the service stopped: writers append to the log and the read model together, and a
rebuild folds the log as of one snapshot, so the rows it writes could miss an append racing
with it.

How (`rebuild_read_model`, method "sql", the default): PostgreSQL folds the tasks whose events
take the common path itself, in N sessions (one per task-id range, as of one exported snapshot)
into the UNLOGGED `task_rebuild_stage` (comfy_fleet/log/rebuild_sql.py); then one transaction
checks the log is as those sessions saw it, empties the read model, moves the staged rows in
(one INSERT) and folds every other task in Python (`LogFold`, in this process) from the events
of the tasks still without a row; it commits only if every task got its row.
tests/integration/test_rebuild_sql.py shows the rows equal the fold of every task.

Method "fold" (the Python fold of every task): one transaction (REPEATABLE READ) exports its
snapshot, empties the read model (TRUNCATE: readers wait for the commit) and COPYs the new rows
in; it commits only if every row was folded, so no reader sees a half-built read model and a failure leaves the old
one intact. The rows come from N folds (N = cores by default), each over one range of task ids
(`task_id_ranges`) in a process of its own: it reads its range as of that snapshot with
`COPY ... TO STDOUT`, ordered by (task_id, seq), folds each task with `task_state.apply` (the
fold, in place) and sends the rows, as COPY text, through a pipe to the transaction's COPY.
With N = 1 the fold runs in this process. tests/contract/test_event_log.py shows the result
equals the fold of every task, whatever N.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import re
import tempfile
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import asyncpg
import orjson

from comfy_fleet import errors

from comfy_fleet.log import rebuild_sql
from comfy_fleet.log import events, task_state
from comfy_fleet.log.event_log import state_json
from comfy_fleet.log.sql import queries
from comfy_fleet.log.task_state import TaskState

#: The read model's columns, in the order of `read_model_row`.
COLUMNS = ("task_id", "client_task_id", "workflow", "status", "priority", "webhook",
           "last_seq", "created_at", "updated_at", "state", "tenant")

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


def task_id_ranges(n: int) -> list[tuple[str, str]]:
    """The task-id space (uuids in PostgreSQL's order) in `n` contiguous ranges of equal width,
    as inclusive (first, last) bounds. Task ids are uuid4, so the ranges hold about as many
    tasks each."""
    if n < 1:
        raise ValueError(f"task_id_ranges: n must be at least 1, not {n}")
    starts = [(i << 128) // n for i in range(n + 1)]
    return [(str(uuid.UUID(int=a)), str(uuid.UUID(int=b - 1))) for a, b in zip(starts, starts[1:])]


# --- COPY text: the log's rows in, the read model's rows out -----------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPED = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _text(value: str | None) -> bytes:
    return b"\\N" if value is None else value.translate(_ESCAPES).encode()


def _unescape(field: bytes) -> bytes:
    return _ESCAPED.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(1)), field)


def read_model_row(s: TaskState) -> bytes:
    """The read-model row of a state (COLUMNS) as one line of COPY text. The JSON text has no raw
    control characters (JSON escapes them), so only its backslashes need doubling."""
    return b"%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n" % (
        s.task_id.encode(), _text(s.client_task_id), _text(s.workflow), _text(s.status),
        s.priority, _text(s.webhook), s.seq, s.created_at.isoformat().encode(),
        s.updated_at.isoformat().encode(), state_json(s).replace(b"\\", b"\\\\"),
        _text(s.tenant),
    )


class LogFold:
    """Folds the log as COPY text (lines of task_id, seq, type, schema_version, payload,
    recorded_at, in DateStyle ISO and UTC; each task's events together and in seq order) into
    read-model rows as COPY text. `feed` takes the text in chunks of any size and returns the rows
    of the tasks it completed; `finish` returns the last one."""

    def __init__(self) -> None:
        self.tasks = 0
        self._tail = b""
        self._current = b""  # task_id of the state being folded, as in the log's text
        self._task_id = ""
        self._state: TaskState | None = None

    def feed(self, data: bytes) -> bytes:
        lines = (self._tail + data if self._tail else data).split(b"\n")
        self._tail = lines.pop()
        rows: list[bytes] = []
        state, current, task_id = self._state, self._current, self._task_id
        apply, decode, loads = task_state.apply, events.decode, orjson.loads
        parse_at = datetime.fromisoformat
        try:
            for line in lines:
                tid, seq, type_, version, payload, at = line.split(b"\t")
                if tid != current:
                    if state is not None:
                        rows.append(read_model_row(state))
                    state, current, task_id = None, tid, tid.decode()
                if b"\\" in payload:
                    payload = _unescape(payload)
                event = decode(type_.decode(), int(version), loads(payload))
                state = apply(state, task_id, int(seq), parse_at(at.decode()), event, in_place=True)
        finally:
            self.tasks += len(rows)
            self._state, self._current, self._task_id = state, current, task_id
        return b"".join(rows)

    def finish(self) -> bytes:
        if self._tail:
            raise errors.FleetError("rebuild: the log's COPY text ends inside a line")
        if self._state is None:
            return b""
        self.tasks += 1
        row, self._state = read_model_row(self._state), None
        return row


# --- one range: read, fold, send ------------------------------------------------------------

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


#: How a rebuild computes the rows: "sql" (the default) has PostgreSQL fold the common
#: lifecycles in `workers` sessions (comfy_fleet/log/rebuild_sql.py) and folds the rest in Python
#: in this process; "fold" folds every task in Python, in `workers` processes.
METHODS = ("sql", "fold")

async def _fold_rest(conn: asyncpg.Connection) -> int:
    """In the rebuild's transaction, after the staged rows were moved in: every task without a
    row yet, folded by `LogFold` in this process from `select_log_unrebuilt` and COPYd in. The
    rows wait in a temporary file (in memory up to 64 MiB): one connection cannot COPY out and
    in at once. Returns the number of tasks."""
    fold = LogFold()
    failed: list[BaseException] = []
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:

        async def sink(data: bytes) -> None:
            if failed:
                return
            try:
                spool.write(fold.feed(data))
            except BaseException as exc:
                # As in fold_range: asyncpg's COPY TO does not survive an error raised by its
                # output; the caller terminates the connection (rolling back) and we raise it.
                failed.append(exc)
                conn.terminate()

        try:
            await conn.copy_from_query(queries["select_log_unrebuilt"], output=sink)
        except BaseException as exc:
            raise (failed[0] if failed else exc) from None
        if failed:
            raise failed[0]
        spool.write(fold.finish())
        if fold.tasks:
            spool.seek(0)
            await conn.copy_to_table("tasks", source=spool, columns=list(COLUMNS), format="text")
    return fold.tasks


async def rebuild_read_model(dsn: str, workers: int | None = None, method: str = "sql") -> int:
    """Replace the read model by the fold of the log; returns the number of tasks. `method`:
    see METHODS; `workers` (default: one per core) is the number of SQL fold sessions of "sql",
    of fold processes of "fold" (1 folds in this process). See the module docstring."""
    if method not in METHODS:
        raise ValueError(f"rebuild: method must be one of {METHODS}, not {method!r}")
    n = max(1, workers if workers is not None else os.cpu_count() or 1)
    ranges = task_id_ranges(n)
    tasks: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        if method == "sql":
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", rebuild_sql.REBUILD_LOCK):
                raise errors.FleetError("rebuild: another rebuild is running")
            staged, extent = await rebuild_sql.stage(dsn, conn, ranges)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute(queries["empty_read_model"])
        # A COPY the server refuses at its start (a column or a right missing) fails here, with
        # its own error, before any fold starts.
        columns = list(COLUMNS)
        await conn.copy_to_table("tasks", source=memoryview(b""), columns=columns, format="text")
        if method == "sql":
            if tuple(await conn.fetchrow(queries["log_extent"])) != extent:
                raise errors.FleetError(
                    "rebuild: the log changed while it was being folded; stop the service and"
                    " run the rebuild again"
                )
            await conn.execute(queries["move_stage_to_read_model"])
            tasks += [staged, await _fold_rest(conn)]
        else:
            rows = (
                _rows_in_process(dsn, snapshot, *ranges[0], tasks)
                if n == 1
                else _rows_from_processes(dsn, snapshot, ranges, tasks)
            )
            async with contextlib.aclosing(rows):
                await conn.copy_to_table("tasks", source=rows, columns=columns, format="text")
        await conn.execute("COMMIT")
        if method == "sql":
            await conn.execute(queries["empty_rebuild_stage"])
    except BaseException:
        # Disconnecting rolls the transaction back. Not ROLLBACK: after a COPY that the server
        # refused at its start and that our rows then failed too, asyncpg never answers again.
        conn.terminate()
        raise
    finally:
        await conn.close()
    return sum(tasks)
