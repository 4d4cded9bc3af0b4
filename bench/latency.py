"""Overhead latency: N tasks one at a time (`solid` 8x8 with a callback), submit to webhook
received, with the breakdown from the task's own events; beside it, a minimal direct client's
time for the same prompt on one stand-in.

    .venv/bin/python -m bench.latency [--tasks 200] [--endpoints 4] [--warmup 10] [--hops]

`--hops` also prints each hop of the path (`comfy_fleet.hop_trace`: the service's processes note
when a task passed each hop; the marks cost nothing when off, and little when on).

Times of the stages come from GET /tasks/{id}/events (`at`, the service's wall clock, same
machine as this script); submit, acknowledgement and webhook arrival are taken here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.common import DirectClient, free_port, machine, percentile, serve_hook, service, tiny_prompt
from comfy_fleet import hop_trace

#: (label, how to find its time in one task's record), in the order they happen.
STAGES = [
    ("acknowledged (POST answered)", "ack"),
    ("task.submitted recorded", "task.submitted"),
    ("task.dispatched recorded", "task.dispatched"),
    ("task.started (ComfyUI runs it)", "task.started"),
    ("task.output_stored (done, fetched, in S3)", "task.output_stored"),
    ("task.succeeded recorded", "task.succeeded"),
    ("webhook received", "received"),
    ("webhook.delivered recorded", "webhook.delivered"),
]


class WallReceiver:
    """Webhook receiver that wakes the waiter of each task and keeps the wall-clock arrival."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.count: dict[str, int] = {}
        self.runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            now = time.time()
            tid = orjson.loads(await request.read())["task"]["task_id"]
            self.arrived.setdefault(tid, now)
            self.count[tid] = self.count.get(tid, 0) + 1
            fut = self.waiters.get(tid)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return web.Response(status=204)

        self.runner = await serve_hook(handle, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def fleet(url: str, n: int, warmup: int) -> tuple[list[dict[str, float]], int]:
    receiver = WallReceiver()
    await receiver.start()
    records: list[dict[str, float]] = []
    lost = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for i in range(warmup + n):
                body = orjson.dumps({"workflow": "solid", "params": {"width": 8, "height": 8, "color": i},
                                     "callback_url": receiver.url})
                t0 = time.time()
                async with http.post(f"{url}/tasks", data=body,
                                     headers={"content-type": "application/json"}) as r:
                    payload = await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"POST /tasks answered {r.status}: {payload[:200]!r}")
                t_ack = time.time()
                tid = orjson.loads(payload)["task_id"]
                fut = receiver.waiters.setdefault(tid, asyncio.get_running_loop().create_future())
                if tid in receiver.arrived:
                    fut.set_result(None)
                try:
                    await asyncio.wait_for(fut, 30)
                except TimeoutError:
                    lost += 1
                    continue
                if i >= warmup:
                    records.append({"tid": tid, "t0": t0, "ack": t_ack, "received": receiver.arrived[tid]})  # type: ignore[dict-item]
            # webhook.delivered is recorded after the receiver answered: give it a moment.
            await asyncio.sleep(1.0)
            for rec in records:
                async with http.get(f"{url}/tasks/{rec['tid']}/events") as r:
                    evs = orjson.loads(await r.read())
                for e in evs:
                    rec.setdefault(e["type"], _epoch(e["at"]))
    finally:
        await receiver.stop()
    return records, lost


async def direct(base: str, n: int, warmup: int) -> list[float]:
    c = DirectClient(base)
    await c.start()
    out: list[float] = []
    try:
        for i in range(warmup + n):
            t = time.perf_counter()
            await c.run(tiny_prompt(i))
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1000)
    finally:
        await c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=10, help="tasks run first and not counted")
    ap.add_argument("--hops", action="store_true", help="print each hop's time (hop marks on)")
    args = ap.parse_args()
    hops_dir = tempfile.mkdtemp(prefix="comfy-fleet-hops-") if args.hops else None
    if hops_dir is not None:
        # Inherited by Ray's workers: the service's actors and replicas mark their hops.
        os.environ[hop_trace.ENV] = hops_dir
    # The direct client is httpx; its per-request INFO log line is not part of ComfyUI's cost.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    with service(endpoints=args.endpoints) as (url, _settings, parts):
        records, lost = asyncio.run(fleet(url, args.tasks, args.warmup))
        direct_ms = asyncio.run(direct(parts.standins[0].url, args.tasks, args.warmup))
    load_after = os.getloadavg()[0]

    def ms(rec: dict[str, float], key: str) -> float | None:
        return (rec[key] - rec["t0"]) * 1000 if key in rec else None

    total = [ms(r, "received") for r in records]
    total_ms = [t for t in total if t is not None]
    print(f"machine: {machine()}; load average before {load_before:.2f}, after {load_after:.2f}")
    print(f"{len(records)} tasks one at a time over {args.endpoints} stand-in endpoint(s) "
          f"(after {args.warmup} warm-up); lost: {lost}")
    print(f"{'stage (time since submit)':44s} {'p50 ms':>8s} {'p99 ms':>8s}   {'step p50':>8s} {'step p99':>8s}")
    prev: str | None = None
    for label, key in STAGES:
        at = [v for r in records if (v := ms(r, key)) is not None]
        if not at:
            print(f"  {label:42s} (not recorded)")
            continue
        steps = [
            (r[key] - r[prev]) * 1000 for r in records if prev and key in r and prev in r
        ] if prev else at
        same = prev is not None and all(r.get(key) == r.get(prev) for r in records if key in r)
        print(f"  {label:42s} {percentile(at, 50):8.1f} {percentile(at, 99):8.1f}   "
              f"{percentile(steps, 50):8.1f} {percentile(steps, 99):8.1f}"
              + ("  (same append as the line above)" if same else ""))
        if key != "webhook.delivered":
            prev = key
    p50, p99 = percentile(total_ms, 50), percentile(total_ms, 99)
    d50, d99 = percentile(direct_ms, 50), percentile(direct_ms, 99)
    print(f"comfy-fleet submit -> webhook received: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(floors: p50 <= 40, p99 <= 150)")
    print(f"direct client, same prompt (post, wait on socket, history, view): p50 {d50:.1f} ms, p99 {d99:.1f} ms")
    print(f"overhead over direct at p50: {p50 - d50:.1f} ms (aim <= 15 ms)")
    print(f"SUMMARY latency tasks={len(records)} p50={p50:.1f}ms p99={p99:.1f}ms direct_p50={d50:.1f}ms "
          f"direct_p99={d99:.1f}ms overhead_p50={p50 - d50:.1f}ms lost={lost} load={load_before:.2f}/{load_after:.2f}")
    if hops_dir is not None:
        print_hops(hops_dir, records)


def print_hops(directory: str, records: list[dict[str, float]]) -> None:
    """Each hop of the measured tasks' path, and the ends this script saw around them."""
    lines = hop_trace.read(directory)
    seen = hop_trace.passes(lines)
    ids = [str(r["tid"]) for r in records]
    # The receiver notes the arrival before it answers: measured from the POST's start.
    first, last = hop_trace.HOPS[0][0], "webhook.send"
    outer = [
        ("POST sent", first, [(seen[t][first] - r["t0"]) * 1000 for t, r in zip(ids, records)
                              if first in seen.get(t, {})]),
        *hop_trace.steps(lines, ids),
        (last, "webhook received",
         [(r["received"] - seen[t][last]) * 1000 for t, r in zip(ids, records)
          if last in seen.get(t, {})]),
    ]
    said = {**dict(hop_trace.HOPS), "webhook received": "the receiver has it (this script)"}
    print(f"hops of the same tasks ({len(ids)}), from the service's hop marks:")
    print(f"  {'from':22s} {'to':22s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s}  what happened")
    for a, b, ms_ in outer:
        if not ms_:
            print(f"  {a:22s} {b:22s} (not marked)")
            continue
        print(f"  {a:22s} {b:22s} {percentile(ms_, 50):7.2f} {percentile(ms_, 90):7.2f} "
              f"{percentile(ms_, 99):7.2f}  {said.get(b, '')}")


if __name__ == "__main__":
    main()
