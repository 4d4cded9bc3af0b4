"""The floor of each hop on this machine, in one run: what a task's path costs before any code
of ours, the yardstick for `bench.latency --hops`.

Each hop is timed on its own, paced one at a time with a 10 ms gap as `bench.latency` sends its
tasks (so each side sleeps between two and pays its wake-up), and back to back:

- a process hop: one byte to another process over a loopback socket and back;
- an empty call to an async Ray actor from another async actor (Ray's own cost: serialising,
  gRPC, its threads): forward (caller to callee) and the round trip; and an item of a Ray
  stream (an async generator method), as the router hands tasks to an endpoint;
- a PostgreSQL commit of one small row (asyncpg), and a NOTIFY: commit to the listener's callback;
- an S3 PUT of a small output (SeaweedFS, `weed mini`, through the service's own S3 client);
- a loopback HTTP POST (aiohttp client and server): what a webhook or a ComfyUI call costs.

It ends with the sum of the hops comfy-fleet's path adds to a direct client's (the ingress hop
is measured by `bench.latency --hops` itself).

    .venv/bin/python -m bench.hops [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg
from aiohttp import web

from bench.common import free_port, machine, percentile, serve_hook
from bench.db_cpu import process_cpu_s

GAP_S = 0.01

Timings = dict[str, list[float]]
#: CPU per hop in ms, by label (measured back to back, both ends unless said)
CPU: dict[str, float] = {}


def proc_cpu_s(pid: int) -> float:
    return process_cpu_s(pid) or 0.0


def cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu_s(p) for p in pids)


Once = Callable[[], Awaitable[dict[str, float] | float]]


async def timed(n: int, gap_s: float, once: Once) -> Timings:
    """Run `once` n times (after 20 unrecorded), `gap_s` apart; each returns ms or {label: ms}."""
    out: Timings = {}
    for i in range(n + 20):
        got = await once()
        if i >= 20:
            for label, ms in (got.items() if isinstance(got, dict) else [("", got)]):
                out.setdefault(label, []).append(ms)
        if gap_s:
            await asyncio.sleep(gap_s)
    return out


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(1):
        sock.sendall(data)


async def process_hop(n: int, gap_s: float) -> Timings:
    a, b = socket.socketpair()
    child = multiprocessing.get_context("fork").Process(target=_echo, args=(b,), daemon=True)
    child.start()
    b.close()
    reader, writer = await asyncio.open_connection(sock=a)

    async def once() -> float:
        t = time.perf_counter()
        writer.write(b"x")
        await reader.readexactly(1)
        return (time.perf_counter() - t) * 1000

    try:
        return await timed(n, gap_s, once)
    finally:
        writer.close()
        child.join(timeout=5)


def ray_calls(n: int) -> dict[float, Timings]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        @ray.remote
        class Callee:
            async def call(self, sent: float) -> float:
                return time.time() - sent

            def pid(self) -> int:
                return os.getpid()

        @ray.remote
        class Caller:
            def __init__(self, callee: object) -> None:
                self.callee = callee

            async def run(self, n: int, gap_s: float) -> Timings:
                async def once() -> dict[str, float]:
                    sent = time.time()
                    forward = await self.callee.call.remote(sent)  # type: ignore[attr-defined]
                    return {"actor call, forward": forward * 1000,
                            "actor call, round trip": (time.time() - sent) * 1000}

                return await timed(n, gap_s, once)

            def pid(self) -> int:
                return os.getpid()

        @ray.remote
        class Feeder:
            """Puts items on a stream, as the router does on an endpoint's dispatch stream."""

            def __init__(self) -> None:
                self.queue: asyncio.Queue[float | None] = asyncio.Queue()

            async def feed(self) -> AsyncIterator[float]:
                while (sent := await self.queue.get()) is not None:
                    yield sent

            async def run(self, n: int, gap_s: float) -> None:
                for _ in range(n + 20):
                    self.queue.put_nowait(time.time())
                    if gap_s:
                        await asyncio.sleep(gap_s)
                self.queue.put_nowait(None)

            def pid(self) -> int:
                return os.getpid()

        @ray.remote
        class Reader:
            def __init__(self, feeder: object) -> None:
                self.feeder = feeder

            async def read(self) -> list[float]:
                late: list[float] = []
                feed = self.feeder.feed  # type: ignore[attr-defined]
                async for ref in feed.options(num_returns="streaming").remote():
                    late.append((time.time() - await ref) * 1000)
                return late[20:]

            def pid(self) -> int:
                return os.getpid()

        callee = Callee.remote()  # type: ignore[attr-defined]
        caller = Caller.remote(callee)  # type: ignore[attr-defined]
        pids = [ray.get(caller.pid.remote()), ray.get(callee.pid.remote())]
        out = {GAP_S: ray.get(caller.run.remote(n, GAP_S))}
        before = cpu_of(pids)
        out[0.0] = ray.get(caller.run.remote(n, 0.0))
        CPU["Ray actor call (caller + callee)"] = (cpu_of(pids) - before) * 1000 / (n + 20)

        feeder = Feeder.remote()  # type: ignore[attr-defined]
        reader = Reader.remote(feeder)  # type: ignore[attr-defined]
        pids = [ray.get(feeder.pid.remote()), ray.get(reader.pid.remote())]
        for gap in (GAP_S, 0.0):
            reading = reader.read.remote()
            time.sleep(0.5)  # the stream is open
            before = cpu_of(pids)
            ray.get(feeder.run.remote(n, gap))
            late = ray.get(reading)
            if gap:
                out[gap]["stream item, forward"] = late
            else:
                # Back to back, items queue behind one another (a stream is one way): its
                # time is a queue's, not a hop's; its CPU is what counts.
                used = cpu_of(pids) - before
                CPU["Ray stream item (router + endpoint)"] = used * 1000 / (n + 20)
        return out
    finally:
        ray.shutdown()


async def postgres_hops(n: int, gap_s: float, dsn: str) -> Timings:
    writer = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    heard: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("hops", lambda *_: heard.put_nowait(time.perf_counter()))
    await writer.execute("CREATE TABLE IF NOT EXISTS hops (id bigserial PRIMARY KEY, body jsonb)")
    backends = [await c.fetchval("SELECT pg_backend_pid()") for c in (writer, listener)]
    cpu_before = time.process_time(), cpu_of(backends)

    async def once() -> dict[str, float]:
        t = time.perf_counter()
        await writer.execute("INSERT INTO hops (body) VALUES ('{\"a\": 1}')")
        commit = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        await writer.execute("NOTIFY hops, 'x'")
        return {"commit": commit, "notice": (await heard.get() - t) * 1000}

    try:
        got = await timed(n, gap_s, once)
        if not gap_s:
            per = 1000 / (n + 20)
            CPU["PostgreSQL commit + NOTIFY (client + backends)"] = (
                (time.process_time() - cpu_before[0] + cpu_of(backends) - cpu_before[1]) * per
            )
        return got
    finally:
        await writer.execute("DROP TABLE hops")
        await writer.close()
        await listener.close()


async def s3_put(n: int, gap_s: float) -> Timings:
    from comfy_fleet.storage.s3 import S3BlobStore
    from comfy_fleet_devstack.seaweed import SeaweedS3

    weed = SeaweedS3(tempfile.mkdtemp(prefix="comfy-fleet-hops-"), bucket="hops").start()
    try:
        store = await S3BlobStore.create(
            bucket="hops", endpoint_url=weed.endpoint_url, region=weed.region,
            access_key=weed.access_key, secret_key=weed.secret_key,
        )
        png = b"\x89PNG\r\n\x1a\n" + bytes(200)
        count = iter(range(10**9))

        async def once() -> float:
            t = time.perf_counter()
            await store.put(f"out/{next(count)}.png", png, "image/png")
            return (time.perf_counter() - t) * 1000

        weed_pid = weed._proc.pid  # noqa: SLF001  (the server's process, for its CPU)
        before = time.process_time(), proc_cpu_s(weed_pid)
        try:
            got = await timed(n, gap_s, once)
            if not gap_s:
                CPU["S3 PUT (client + SeaweedFS)"] = (
                    time.process_time() - before[0] + proc_cpu_s(weed_pid) - before[1]
                ) * 1000 / (n + 20)
            return got
        finally:
            await store.close()
    finally:
        weed.stop()


def _answer_hooks(port: int) -> None:
    """A webhook receiver in a process of its own (so the client's CPU is this process's)."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def forever() -> None:
        await serve_hook(handle, port)
        await asyncio.Event().wait()

    asyncio.run(forever())


async def http_post(n: int, gap_s: float) -> Timings:
    port = free_port()
    fork = multiprocessing.get_context("fork")
    server = fork.Process(target=_answer_hooks, args=(port,), daemon=True)
    server.start()
    body = b'{"task": {"task_id": "x", "status": "succeeded"}}'
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # until it listens
                try:
                    async with http.post(f"http://127.0.0.1:{port}/hook", data=body) as r:
                        await r.read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)

            async def once() -> float:
                t = time.perf_counter()
                async with http.post(f"http://127.0.0.1:{port}/hook", data=body) as r:
                    await r.read()
                return (time.perf_counter() - t) * 1000

            before = time.process_time(), proc_cpu_s(server.pid or 0)
            got = await timed(n, gap_s, once)
            if not gap_s:
                per = 1000 / (n + 20)
                CPU["HTTP POST, the client's side"] = (time.process_time() - before[0]) * per
                served = proc_cpu_s(server.pid or 0) - before[1]
                CPU["HTTP POST, the server's side"] = served * per
            return got
    finally:
        server.terminate()
        server.join(timeout=5)


def _row(label: str, paced: list[float], busy: list[float] | None) -> str:
    line = f"  {label:44s} {percentile(paced, 50):7.2f} {percentile(paced, 99):7.2f}   "
    if busy is None:
        return line + f"{'-':>7s} {'-':>7s}"
    return line + f"{percentile(busy, 50):7.2f} {percentile(busy, 99):7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="timings of each hop, each way")
    args = ap.parse_args()
    from comfy_fleet_devstack import postgres

    admin = postgres.find_test_server()
    name = postgres.unique_database_name("hops")
    dsn = asyncio.run(postgres.create_database(admin, name))
    load_before = os.getloadavg()[0]
    try:
        rows: dict[str, tuple[list[float], list[float] | None]] = {}

        def both(label: str, run: Callable[[float], Awaitable[Timings]]) -> None:
            paced, busy = asyncio.run(run(GAP_S)), asyncio.run(run(0.0))
            for key in paced:
                rows[f"{label} {key}".strip()] = (paced[key], busy[key])

        both("process hop (socket, there and back)", lambda g: process_hop(args.n, g))
        for key, paced in (calls := ray_calls(args.n))[GAP_S].items():
            rows[f"Ray {key}"] = (paced, calls[0.0].get(key))
        both("PostgreSQL", lambda g: postgres_hops(args.n, g, dsn))
        both("S3 PUT of 208 bytes (SeaweedFS)", lambda g: s3_put(args.n, g))
        both("HTTP POST on loopback (aiohttp)", lambda g: http_post(args.n, g))
    finally:
        asyncio.run(postgres.drop_database(admin, name))
    print(f"machine: {machine()}; load average before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(f"{'hop':46s} {'one at a time':>15s}   {'back to back':>15s}")
    print(f"{'':46s} {'p50 ms':>7s} {'p99 ms':>7s}   {'p50 ms':>7s} {'p99 ms':>7s}")
    for label, (paced, busy) in rows.items():
        print(_row(label, paced, busy))

    def p50(label: str) -> float:
        return percentile(rows[label][0], 50)

    # What comfy-fleet's path has that a direct client's has not (one task at a time): three
    # commits before the webhook (submitted, dispatched, the end), the queued notice, the item
    # of the endpoint's dispatch stream, the S3 PUT and the webhook POST; the ended notice
    # overlaps the end's commit, and the direct client's GET /history (an HTTP call) is one
    # comfy-fleet does not make.
    floor = (3 * p50("PostgreSQL commit") + p50("PostgreSQL notice")
             + p50("Ray stream item, forward") + p50("S3 PUT of 208 bytes (SeaweedFS)"))
    print("the hops comfy-fleet adds to a direct client's path, one at a time, p50: "
          f"{floor:.1f} ms "
          "(3 commits, a notice, a Ray stream's item, an S3 PUT; its webhook POST stands for the "
          "direct client's GET /history), before the ingress hop and any code of ours")
    print("CPU of one hop, back to back (ms):")
    for label, ms in CPU.items():
        print(f"  {label:60s} {ms:6.3f}")
    # The I/O of one task on comfy-fleet's side, priced at these figures: one stream item, four
    # appends (submitted, dispatched, the end, webhook delivered) each a commit with notices,
    # one S3 PUT, and the client's side of three HTTP exchanges (POST /prompt, GET /view, the
    # webhook) plus the server's side of one (POST /tasks; Serve's own proxying not counted).
    cpu_floor = (CPU["Ray stream item (router + endpoint)"]
                 + 4 * CPU["PostgreSQL commit + NOTIFY (client + backends)"]
                 + CPU["S3 PUT (client + SeaweedFS)"]
                 + 3 * CPU["HTTP POST, the client's side"] + CPU["HTTP POST, the server's side"])
    print(f"the I/O of one task on comfy-fleet's side at these prices: {cpu_floor:.1f} ms of CPU "
          "(a Ray stream's item, 4 commits, an S3 PUT, 3 HTTP exchanges as client and 1 as "
          "server), "
          "before any code of ours and the websocket's frames")
    print(f"SUMMARY hops floor_p50={floor:.1f}ms cpu_floor={cpu_floor:.1f}ms "
          f"load={load_before:.2f}")


if __name__ == "__main__":
    main()
