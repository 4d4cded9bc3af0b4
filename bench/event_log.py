"""The event log in PostgreSQL: append rate with concurrent writers, rebuilding every task's
state from N events (default 1,000,000), and API-style reads of one task with them stored.

    .venv/bin/python -m bench.event_log [--events 1000000] [--writers 1,4,16] [--seconds 8]
                                        [--pool 8] [--reads 2000] [--only-rebuild]
                                        [--rebuild-workers N] [--rebuild-methods sql,fold]
                                        [--tail-events 10000] [--open-tasks 500]

`--only-rebuild` skips the append rates and the reads: fill, then time the rebuilds. The log is
N events in the end. First N - 3 x `--tail-events` (the last `--open-tasks` tasks still
running) and the first refresh of the fold snapshot (`make rebuild ARGS=--snapshot-only`, a full
fold since there is none); then a tail (the running tasks end, new tasks come) and a rebuild
with the read model lost (every row written); a tail and the periodic refresh; a tail and the
rebuild (`make rebuild`: the snapshot, the tail folded onto it, the read model sound but for the
tail's rows); then the full refold (`--full`) once per method of `--rebuild-methods` (default
sql,fold: the common lifecycles folded in SQL sessions, and every task folded in Python
processes; `--rebuild-workers` of each, default one per core) on the same N events. Each step
prints its wall time and its CPU time (bench/db_cpu.py: this process and the PostgreSQL
backends of the database), which a loaded machine stretches less.

Runs on a database of its own (created on the test PostgreSQL server, dropped at the end).
The events are written with COPY (the append-only trigger refuses UPDATE/DELETE/TRUNCATE,
not INSERT), as realistic task lifecycles of 8 events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from bench.common import machine, percentile
from bench.db_cpu import PhaseCpu
from comfy_fleet.cli.rebuild import describe
from comfy_fleet.log import events
from comfy_fleet.log import rebuild
from comfy_fleet.cli.migrate import apply_dsn
from comfy_fleet.log.postgres import PostgresEventLog
from comfy_fleet.log.task_state import TaskState

PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fleet/x"}},
}


def lifecycle(task_id: str, prompt_id: str, color: int) -> list[events.Event]:
    """One task's events as the service records them for a `solid` run with a callback."""
    return [
        events.TaskSubmitted(
            workflow="solid", workflow_version="v1",
            params={"width": 8, "height": 8, "color": color},
            prompt={**PROMPT, "1": {**PROMPT["1"], "inputs": {**PROMPT["1"]["inputs"], "color": color}}},
            callback_url="http://127.0.0.1:9/hook", request_hash=uuid.uuid4().hex,
        ),
        events.TaskDispatched(endpoint="127.0.0.1:8188", prompt_id=prompt_id, attempt=1),
        events.TaskPromptQueued(prompt_id=prompt_id, number=1.0),
        events.TaskStarted(prompt_id=prompt_id),
        events.TaskOutputStored(
            prompt_id=prompt_id, index=0, node_id="2", filename="x_00001_.png", subfolder="fleet",
            kind="images", content_type="image/png", size=92, sha256="0" * 64,
            s3_key=f"outputs/{task_id}/0/x_00001_.png",
        ),
        events.TaskSucceeded(prompt_id=prompt_id),
        events.WebhookAttempted(webhook_id=f"msg_{task_id}", attempt=1, status_code=500, retry_in_s=1.0),
        events.WebhookDelivered(webhook_id=f"msg_{task_id}", attempt=2, status_code=204),
    ]


EVENTS_PER_TASK = len(lifecycle("t", "p", 0))


async def append_rate(dsn: str, writers: int, seconds: float, pool: int) -> tuple[float, list[float]]:
    """`writers` asyncio tasks each appending whole lifecycles, one append per event (as the
    service does), for `seconds`. Returns (events/s, per-append latencies in ms)."""
    log = await PostgresEventLog.connect(dsn, max_size=pool)
    stored = 0
    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def writer() -> None:
        nonlocal stored
        while time.monotonic() < stop:
            tid, pid = str(uuid.uuid4()), str(uuid.uuid4())
            state: TaskState | None = None
            for seq, ev in enumerate(lifecycle(tid, pid, random.randrange(1 << 24))):
                t = time.perf_counter()
                state = await log.append(tid, seq, [ev], state)
                lat.append((time.perf_counter() - t) * 1000)
                stored += 1

    start = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.monotonic() - start
    await log.close()
    return stored / elapsed, lat


def _templates() -> list[tuple[str, int, str]]:
    """(type, schema_version, payload JSON) of a lifecycle, with TID and PID for the ids."""
    return [(e.TYPE, e.SCHEMA_VERSION, orjson.dumps(e.payload()).decode())
            for e in lifecycle("TID", "PID", 7)]


async def _copy(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table(
        "task_events", records=rows,
        columns=["task_id", "seq", "type", "schema_version", "payload", "recorded_at"],
    )


#: A task written in part: (task_id, prompt_id, recorded_at), its later events still to come.
Open = tuple[uuid.UUID, str, datetime]


async def fill(dsn: str, n_events: int, open_tasks: int = 0) -> tuple[int, float, list[Open]]:
    """COPY `n_events` into task_events: whole lifecycles, but of the last `open_tasks` tasks
    only the first half of their events (running tasks, whose end comes later). Returns (tasks,
    seconds, the open tasks)."""
    tasks = (n_events + open_tasks * (EVENTS_PER_TASK - EVENTS_PER_TASK // 2)) // EVENTS_PER_TASK
    # Payload templates once; per task only the ids change (string replace is far cheaper than
    # building and serialising 1M dataclasses, and the fold still decodes every payload).
    tmpl = _templates()
    base = datetime.now(UTC) - timedelta(days=1)
    conn = await asyncpg.connect(dsn)
    start = time.monotonic()
    chunk = 20_000
    opened: list[Open] = []
    try:
        for first in range(0, tasks, chunk):
            rows: list[tuple[Any, ...]] = []
            for i in range(first, min(tasks, first + chunk)):
                tid = uuid.uuid4()
                stid, pid = str(tid), str(uuid.uuid4())
                at = base + timedelta(milliseconds=i)
                last = len(tmpl)
                if i >= tasks - open_tasks:
                    opened.append((tid, pid, at))
                    last = len(tmpl) // 2
                for seq, (typ, ver, payload) in enumerate(tmpl[:last], start=1):
                    rows.append((tid, seq, typ, ver, payload.replace("TID", stid).replace("PID", pid), at))
            await _copy(conn, rows)
        await conn.execute("ANALYZE task_events")
    finally:
        await conn.close()
    return tasks, time.monotonic() - start, opened


async def append_tail(dsn: str, opened: list[Open], n_events: int) -> tuple[int, int]:
    """COPY the rest of the open tasks' events, then new whole lifecycles, up to `n_events` in
    all: what comes after a fold snapshot. Returns (events, tasks)."""
    tmpl = _templates()
    half = len(tmpl) // 2
    at = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    for tid, pid, _ in opened:
        for seq, (typ, ver, payload) in enumerate(tmpl[half:], start=half + 1):
            rows.append((tid, seq, typ, ver, payload.replace("TID", str(tid)).replace("PID", pid), at))
    new = max(0, n_events - len(rows)) // len(tmpl)
    for _ in range(new):
        tid, pid = uuid.uuid4(), str(uuid.uuid4())
        for seq, (typ, ver, payload) in enumerate(tmpl, start=1):
            rows.append((tid, seq, typ, ver, payload.replace("TID", str(tid)).replace("PID", pid), at))
    conn = await asyncpg.connect(dsn)
    try:
        await _copy(conn, rows)
    finally:
        await conn.close()
    return len(rows), len(opened) + new


async def reads(dsn: str, n: int) -> dict[str, list[float]]:
    """API-style reads of random tasks, one at a time: get (GET /tasks/{id}) and read
    (GET /tasks/{id}/events). Milliseconds."""
    conn = await asyncpg.connect(dsn)
    ids = [str(r["task_id"]) for r in await conn.fetch(
        "SELECT task_id FROM tasks TABLESAMPLE SYSTEM (5) LIMIT $1", n)]
    await conn.close()
    random.shuffle(ids)
    log = await PostgresEventLog.connect(dsn)
    out: dict[str, list[float]] = {"get": [], "read": []}
    for tid in ids:
        t = time.perf_counter()
        await log.get(tid)
        out["get"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await log.read(tid)
        out["read"].append((time.perf_counter() - t) * 1000)
    await log.close()
    return out


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


async def time_rebuilds(
    dsn: str, dbname: str, args: argparse.Namespace, opened: list[Open], tail: int
) -> dict[str, PhaseCpu]:
    """After the fill: the first refresh of the fold snapshot (a full fold); `tail` events and a
    rebuild with the read model lost (every row written); `tail` more and the periodic refresh;
    `tail` more and the rebuild (the read model sound but for the rows of the last tail); the
    full refold of each method on the same log. Returns each one's wall and CPU time."""
    timed: dict[str, PhaseCpu] = {}

    async def timed_run(key: str, what: str, call: Awaitable[rebuild.Rebuilt]) -> None:
        with PhaseCpu(dbname) as cpu:
            done = await call
        timed[key] = cpu
        print(f"{what}: {describe(done, key.startswith('refresh'))}\n    {cpu.describe()} ({_load()})")

    async def appended(opened: list[Open]) -> None:
        events, tasks = await append_tail(dsn, opened, tail)
        print(f"appended: {events} events ({len(opened)} running tasks end, {tasks - len(opened)}"
              f" new tasks)")

    workers = args.rebuild_workers
    await timed_run("refresh_first", "refresh of the fold snapshot, none yet",
                    rebuild.refresh_fold_snapshot(dsn, workers))
    await appended(opened)
    await timed_run("snapshot_lost", "rebuild from the fold snapshot, the read model lost",
                    rebuild.rebuild(dsn, workers))
    await appended([])
    await timed_run("refresh", "refresh of the fold snapshot (the periodic job)",
                    rebuild.refresh_fold_snapshot(dsn, workers))
    await appended([])
    await timed_run("snapshot", "rebuild (`make rebuild`; target 5 s)", rebuild.rebuild(dsn, workers))
    folds = workers or os.cpu_count()
    for method in args.rebuild_methods.split(","):
        how = (f"{folds} Python fold process{'es' if folds != 1 else ''}" if method == "fold"
               else f"{folds} SQL fold session{'s' if folds != 1 else ''}")
        await timed_run(f"full_{method}", f"rebuild --full --method {method} ({how})",
                        rebuild.rebuild(dsn, workers, method, full=True))
    for key in [k for k in timed if k.startswith("full_")]:
        print(f"rebuild from the fold snapshot: {timed['snapshot'].wall_s / timed[key].wall_s:.2f}x"
              f" the wall time, {timed['snapshot'].total_s / max(timed[key].total_s, 1e-9):.2f}x"
              f" the CPU of the full refold ({key[5:]}), same log")
    return timed


async def run(args: argparse.Namespace) -> None:
    from comfy_fleet_devstack import postgres

    admin = postgres.find_test_server()
    name = postgres.unique_database_name("benchlog")
    dsn = await postgres.create_database(admin, name)
    try:
        await apply_dsn(dsn)
        print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
        rates: dict[int, float] = {}
        for w in [] if args.only_rebuild else [int(x) for x in args.writers.split(",")]:
            with PhaseCpu(name) as cpu:
                rate, lat = await append_rate(dsn, w, args.seconds, args.pool)
            rates[w] = rate
            appended = len(lat)  # one latency per append
            print(f"append: {w:2d} writer(s), pool {args.pool}: {rate:7.0f} events/s "
                  f"({rate / EVENTS_PER_TASK:5.0f} task lifecycles/s); one append p50 "
                  f"{percentile(lat, 50):.2f} ms, p99 {percentile(lat, 99):.2f} ms; CPU an append: "
                  f"{cpu.python_s / appended * 1e6:.0f} µs writer, "
                  f"{cpu.database_s / appended * 1e6:.0f} µs PostgreSQL "
                  f"(load {os.getloadavg()[0]:.2f})")
        if args.only_appends:
            print("SUMMARY event_log " + " ".join(f"append_w{w}={v:.0f}/s" for w, v in rates.items()))
            return
        tail = min(args.tail_events, args.events // 6)
        tasks, fill_s, opened = await fill(dsn, args.events - 3 * tail, args.open_tasks)
        conn = await asyncpg.connect(dsn)
        filled = await conn.fetchval("SELECT count(*) FROM task_events")
        await conn.close()
        print(f"filled: {filled} events ({tasks} tasks, {len(opened)} of them running)"
              f" by COPY in {fill_s:.1f} s")
        timed = await time_rebuilds(dsn, name, args, opened, tail)
        rebuild_s = timed["snapshot"].wall_s
        conn = await asyncpg.connect(dsn)
        total = await conn.fetchval("SELECT count(*) FROM task_events")
        await conn.close()
        if args.only_rebuild:
            print(f"SUMMARY event_log rebuild_events={total} "
                  + " ".join(f"rebuild_{k}_s={v.wall_s:.1f} rebuild_{k}_cpu_s={v.total_s:.1f}"
                             for k, v in timed.items()))
            return
        r = await reads(dsn, args.reads)
        print(f"reads with {total} events stored, {len(r['get'])} random tasks one at a time: "
              f"get p50 {percentile(r['get'], 50):.2f} ms p99 {percentile(r['get'], 99):.2f} ms; "
              f"read (events) p50 {percentile(r['read'], 50):.2f} ms p99 {percentile(r['read'], 99):.2f} ms "
              f"(floor p99 < 10 ms) (load {os.getloadavg()[0]:.2f})")
        print("SUMMARY event_log " + " ".join(f"append_w{w}={v:.0f}/s" for w, v in rates.items())
              + f" rebuild_events={total} rebuild_s={rebuild_s:.1f}"
              f" rebuild_full_s={timed[next(k for k in timed if k.startswith('full'))].wall_s:.1f}"
              f" get_p99={percentile(r['get'], 99):.2f}ms"
              f" read_p99={percentile(r['read'], 99):.2f}ms")
    finally:
        await postgres.drop_database(admin, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--writers", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=8.0, help="per writer count")
    ap.add_argument("--pool", type=int, default=8, help="asyncpg pool size (the ingress uses 8, actors 4)")
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--only-rebuild", action="store_true", help="fill and time the rebuild only")
    ap.add_argument("--only-appends", action="store_true", help="time the appends only")
    ap.add_argument("--rebuild-workers", type=int, default=None,
                    help="SQL fold sessions / Python fold processes (default: one per core)")
    ap.add_argument("--rebuild-methods", default="sql,fold",
                    help=f"comma-separated, of {', '.join(rebuild.METHODS)}: each one's full refold"
                         " is timed in turn")
    ap.add_argument("--tail-events", type=int, default=10_000,
                    help="events appended after each fold snapshot (three times, of the --events)")
    ap.add_argument("--open-tasks", type=int, default=500,
                    help="tasks running when the fold snapshot is taken (they end in the tail)")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
