"""Batch intake: a 1,000-task batch (a sweep and a task list) recorded in one request, and the
router draining such a backlog, against 1,000 single submits and a direct client in one run.

    .venv/bin/python -m bench.batch_intake [--tasks 1000] [--endpoints 4] [--clients 64]
                                           [--rounds 3]

Prints, for each kind of batch, the time from request to 202 (the client's view: validation
of every task, building its prompt, the one transaction, the answer) and the time of the one
recording statement alone (`append_batch`, one round trip and its commit, timed in-process on a
database of its own); then the drain rate (first request to last webhook) of a 1,000-task
batch, of 1,000 single POST /tasks, and of the direct client on the same stand-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from bench.common import free_port, machine, serve_hook, service, tiny_prompt
from bench.throughput import direct


class Hooks:
    """A webhook receiver: when each task's and each batch's webhook first arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tasks: dict[str, float] = {}
        self.batches: dict[str, float] = {}
        self.repeats: dict[str, int] = defaultdict(int)
        self.runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            key, seen = (
                (body["batch"]["batch_id"], self.batches) if "batch" in body
                else (body["task"]["task_id"], self.tasks)
            )
            if key in seen:
                self.repeats[key] += 1
            else:
                seen[key] = time.monotonic()
            return web.Response(status=204)

        self.runner = await serve_hook(handle, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def wait(self, ids: list[str], seen: dict[str, float], timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(i not in seen for i in ids):
            await asyncio.sleep(0.02)
        missing = [i for i in ids if i not in seen]
        if missing:
            raise RuntimeError(f"{len(missing)} webhooks never came")
        return max(seen[i] for i in ids)


def sweep_body(n: int, salt: int) -> dict[str, Any]:
    """A sweep of `n` (a multiple of 10) tiny solid images."""
    return {
        "workflow": "solid", "params": {"height": 8, "batch_size": 1},
        "sweep": {
            "width": list(range(8, 8 + n // 10)), "color": [salt * 10 + c for c in range(10)],
        },
    }


def list_body(n: int, salt: int, callback: str | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"workflow": "solid", "params": {"width": 8, "height": 8, "color": salt + i}}
        for i in range(n)
    ]
    if callback:
        for item in items:
            item["callback_url"] = callback
    return {"tasks": items}


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    data = orjson.dumps(body)
    start = time.monotonic()
    async with http.post(url, data=data, headers={"content-type": "application/json"}) as r:
        payload = await r.read()
        if r.status != 202:
            raise RuntimeError(f"{r.status}: {payload[:300]!r}")
    return time.monotonic() - start, orjson.loads(payload)


async def wait_completed(http: aiohttp.ClientSession, url: str, batch_id: str) -> None:
    while True:
        async with http.get(f"{url}/batches/{batch_id}") as r:
            if (await r.json())["status"] == "completed":
                return
        await asyncio.sleep(0.2)


async def intake(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Request-to-202 seconds of `rounds` sweeps and task lists (each drained before the next,
    so every batch is recorded into the same, idle, service)."""
    out: dict[str, list[float]] = {"sweep": [], "tasks": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for r in range(rounds):
            for kind, body in (("sweep", sweep_body(n, r)), ("tasks", list_body(n, 1000 * r))):
                took, batch = await post(http, f"{url}/batches", body)
                out[kind].append(took)
                await wait_completed(http, url, batch["batch_id"])
    return out


async def statement_times(dsn_admin: str, n: int, rounds: int) -> tuple[list[float], list[float]]:
    """Of the one recording statement of an n-task batch, on a database of its own: the seconds
    of `append_batch` (one round trip with its commit, seen from the client), and the
    database's own execution time of the same statement (EXPLAIN ANALYZE, rolled back)."""
    from comfy_fleet.cli import migrate
    from comfy_fleet.log import events, postgres_batches
    from comfy_fleet.log.postgres import PostgresEventLog
    from comfy_fleet.log.sql import queries
    from comfy_fleet_devstack import postgres

    def batch() -> tuple[str, events.BatchSubmitted, list[tuple[str, events.TaskSubmitted]]]:
        batch_id = str(uuid.uuid4())
        tasks = [
            (str(uuid.uuid4()), events.TaskSubmitted(
                workflow="solid", workflow_version="v", params={"width": 8, "color": i},
                prompt=tiny_prompt(i), request_hash="h", batch_id=batch_id,
            ))
            for i in range(n)
        ]
        sub = events.BatchSubmitted(tenant="default", task_ids=[t for t, _ in tasks])
        return batch_id, sub, tasks

    name = postgres.unique_database_name("bench_batch")
    dsn = await postgres.create_database(dsn_admin, name)
    try:
        await migrate.apply_dsn(dsn)
        log = await PostgresEventLog.connect(dsn)
        rtt, server = [], []
        try:
            for r in range(rounds + 1):
                start = time.monotonic()
                await log.append_batch(*batch())
                if r:  # the first warms the pool and the statement's plan
                    rtt.append(time.monotonic() - start)
                _, _, args = postgres_batches.append_batch_args(*batch())
                conn = await asyncpg.connect(dsn)
                await conn.set_type_codec(
                    "jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                    schema="pg_catalog",
                )
                try:
                    tr = conn.transaction()
                    await tr.start()
                    plan = await conn.fetchval(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + queries["append_batch"], *args
                    )
                    await tr.rollback()  # nothing of the measured run stays
                finally:
                    await conn.close()
                server.append(orjson.loads(plan)[0]["Execution Time"] / 1000)  # json text
        finally:
            await log.close()
    finally:
        await postgres.drop_database(dsn_admin, name)
    return rtt, server[1:]


async def drain_batch(url: str, n: int, hooks: Hooks, *, sweep: bool) -> tuple[float, int]:
    """First request to the last webhook of one n-task batch: its batch.completed (a sweep) or
    each task's own (a list with callbacks, as the single submits have)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        start = time.monotonic()
        if sweep:
            body = {**sweep_body(n, 77), "callback_url": hooks.url}
            _, batch = await post(http, f"{url}/batches", body)
            last = await hooks.wait([batch["batch_id"]], hooks.batches)
        else:
            _, batch = await post(http, f"{url}/batches", list_body(n, 5000, hooks.url))
            last = await hooks.wait(batch["task_ids"], hooks.tasks)
    return n / (last - start), len(batch["task_ids"])


async def drain_singles(url: str, n: int, clients: int, hooks: Hooks) -> float:
    """First request to the last webhook of n single POST /tasks from `clients` clients."""
    ids: list[str] = []
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            for i in todo:
                body = {"workflow": "solid", "params": {"width": 8, "height": 8, "color": 9000 + i},
                        "callback_url": hooks.url}
                _, task = await post(http, f"{url}/tasks", body)
                ids.append(task["task_id"])

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        last = await hooks.wait(ids, hooks.tasks)
    return n / (last - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from comfy_fleet_devstack import postgres

    stmt, server = asyncio.run(
        statement_times(postgres.find_test_server(), args.tasks, args.rounds)
    )
    with service(endpoints=args.endpoints) as (url, _settings, parts):

        async def run() -> tuple[dict[str, list[float]], dict[str, float], Hooks]:
            hooks = Hooks()
            await hooks.start()
            try:
                took = await intake(url, args.tasks, args.rounds)
                rates = {}
                rates["batch_sweep"], _ = await drain_batch(url, args.tasks, hooks, sweep=True)
                rates["batch_list"], _ = await drain_batch(url, args.tasks, hooks, sweep=False)
                rates["singles"] = await drain_singles(url, args.tasks, args.clients, hooks)
                rates["direct"] = await direct(
                    [s.url for s in parts.standins], args.tasks, args.clients
                )
            finally:
                await hooks.stop()
            return took, rates, hooks

        took, rates, hooks = asyncio.run(run())
    report(args, took, stmt, server, rates, sum(hooks.repeats.values()))


def report(
    args: argparse.Namespace, took: dict[str, list[float]], stmt: list[float],
    server: list[float], rates: dict[str, float], repeats: int,
) -> None:
    def ms(values: list[float]) -> float:
        return 1000 * statistics.median(values)

    print(f"machine: {machine()}")
    for kind in ("sweep", "tasks"):
        print(f"{args.tasks}-task batch ({kind}): request to 202 median {ms(took[kind]):.0f} ms, "
              f"max {1000 * max(took[kind]):.0f} ms over {len(took[kind])} rounds")
    print(f"recording statement alone ({args.tasks} tasks): one round trip with its commit "
          f"median {ms(stmt):.0f} ms (max {1000 * max(stmt):.0f}); the database's own "
          f"execution time median {ms(server):.0f} ms (max {1000 * max(server):.0f})")
    direct = rates["direct"]
    print(f"drain, first request to last webhook: batch sweep {rates['batch_sweep']:.1f} tasks/s, "
          f"batch list {rates['batch_list']:.1f} tasks/s, {args.tasks} single submits "
          f"{rates['singles']:.1f} tasks/s, direct client {direct:.1f} prompts/s")
    print(f"ratios to the direct client: batch sweep {rates['batch_sweep'] / direct:.3f}, "
          f"batch list {rates['batch_list'] / direct:.3f}, "
          f"singles {rates['singles'] / direct:.3f}; repeated webhooks: {repeats}")
    print(f"SUMMARY batch_intake tasks={args.tasks} sweep_202_ms={ms(took['sweep']):.0f} "
          f"list_202_ms={ms(took['tasks']):.0f} statement_ms={ms(stmt):.0f} "
          f"db_ms={ms(server):.0f} batch_rate={rates['batch_list']:.1f}/s "
          f"singles_rate={rates['singles']:.1f}/s direct={direct:.1f}/s")


if __name__ == "__main__":
    main()
