"""Soak: N tasks (default 2,000; the issue's size is `--tasks 10000`) through 4 stand-ins with
faults injected at random intervals: stand-in restarts (POST /_standin/restart, down 1 s, queue
and history gone), dropped websockets, and the webhook receiver answering 500 for a while.

    .venv/bin/python -m bench.soak [--tasks 2000] [--endpoints 4] [--clients 32] [--fault-every 4]

Prints: tasks acknowledged, ended (by status), lost (acknowledged, never final: must be 0),
duplicated final webhooks (a task whose deliveries carry more than one webhook-id: must be 0),
and the RSS of the service's processes at the start and the end.
TASK_MAX_ATTEMPTS is raised (default 20) so a task whose prompt is lost by several restarts is
dispatched again rather than failed; such failures would be counted as ended, not lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp import web

from bench.common import free_port, machine, serve_hook, service
from bench.scale import fmt_rss, rss_report, service_processes


class FlakyReceiver:
    """Webhook receiver that answers 500 while `failing`; keeps every webhook-id per task and
    which deliveries it acknowledged with 2xx."""

    def __init__(self) -> None:
        self.port = free_port()
        self.failing = False
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.ok: dict[str, int] = defaultdict(int)
        self.types: dict[str, str] = {}
        self.refused = 0
        self.runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            tid = body["task"]["task_id"]
            self.ids[tid].add(request.headers.get("webhook-id", ""))
            if self.failing:
                self.refused += 1
                return web.Response(status=500)
            self.ok[tid] += 1
            self.types[tid] = body.get("type", "")
            return web.Response(status=204)

        self.runner = await serve_hook(handle, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def inject(urls: list[str], receiver: FlakyReceiver, every: float, stop: asyncio.Event,
                 rng: random.Random, counts: Counter[str]) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5 * every, 1.5 * every))
                return
            except TimeoutError:
                pass
            fault = rng.choice(("restart", "drop", "webhook500"))
            counts[fault] += 1
            try:
                if fault == "restart":
                    await http.post(f"{rng.choice(urls)}/_standin/restart", json={"down_s": 1})
                elif fault == "drop":
                    await http.post(f"{rng.choice(urls)}/_standin/drop_websockets")
                else:
                    receiver.failing = True
                    await asyncio.sleep(rng.uniform(1.0, 4.0))
                    receiver.failing = False
            except httpx.HTTPError:
                counts[f"{fault} (control call failed)"] += 1
        receiver.failing = False


async def drive(url: str, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    receiver = FlakyReceiver()
    await receiver.start()
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    acked: list[str] = []
    refusals = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.clients),
                                         timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def post(i: int) -> None:
                nonlocal refusals
                body = orjson.dumps({"workflow": "solid", "params": {"width": 8, "height": 8, "color": i},
                                     "callback_url": receiver.url})
                for _ in range(100):
                    async with http.post(f"{url}/tasks", data=body, headers={"content-type": "application/json"}) as r:
                        payload = await r.read()
                        if r.status == 202:
                            acked.append(orjson.loads(payload)["task_id"])
                            return
                        refusals += 1
                        retry = float(r.headers.get("retry-after", "0.5"))
                    await asyncio.sleep(retry)

            # Warm up, then the start figure of memory.
            await asyncio.gather(*(post(i) for i in range(20)))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(1 for t in acked if receiver.ok.get(t)) < len(acked):
                await asyncio.sleep(0.2)
            rss_start = rss_report(service_processes())

            stop = asyncio.Event()
            injector = asyncio.create_task(inject(urls, receiver, args.fault_every, stop, rng, counts))
            todo = iter(range(20, args.tasks))

            async def client() -> None:
                for i in todo:
                    await post(i)

            t0 = time.monotonic()
            await asyncio.gather(*(client() for _ in range(args.clients)))
            submit_s = time.monotonic() - t0
            # Faults go on until most tasks ended, then the service is left to finish.
            while sum(1 for t in acked if receiver.ok.get(t)) < 0.95 * len(acked) and time.monotonic() - t0 < args.timeout:
                await asyncio.sleep(0.5)
            stop.set()
            await injector
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and sum(1 for t in acked if receiver.ok.get(t)) < len(acked):
                await asyncio.sleep(0.5)
            run_s = time.monotonic() - t0
            await asyncio.sleep(2.0)  # let last deliveries be recorded
            rss_end = rss_report(service_processes())

            statuses: Counter[str] = Counter()
            webhook_states: Counter[str] = Counter()
            not_final: list[str] = []
            failures: Counter[str] = Counter()
            async with httpx.AsyncClient(base_url=url, timeout=30) as api:
                for tid in acked:
                    task = (await api.get(f"/tasks/{tid}")).json()
                    statuses[task["status"]] += 1
                    webhook_states[str(task.get("webhook"))] += 1
                    if task["status"] not in ("succeeded", "failed", "cancelled"):
                        not_final.append(tid)
                    if task["status"] == "failed":
                        error = task.get("error") or {}
                        failures[f"{error.get('code')}: {str(error.get('message'))[:120]}"] += 1
    finally:
        await receiver.stop()
    no_webhook = [t for t in acked if not receiver.ok.get(t)]
    return {
        "acked": len(acked), "refusals": refusals, "statuses": statuses, "not_final": not_final,
        "failures": failures,
        "no_webhook": no_webhook, "webhook_states": webhook_states,
        "dup_ids": sum(1 for t in acked if len(receiver.ids.get(t, ())) > 1),
        "repeats": sum(1 for t in acked if receiver.ok.get(t, 0) > 1),
        "refused_500": receiver.refused, "faults": counts, "submit_s": submit_s, "run_s": run_s,
        "rss_start": rss_start, "rss_end": rss_end,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000, help="the issue's size: 10000")
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    ap.add_argument("--attempts", type=int, default=20, help="TASK_MAX_ATTEMPTS")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    env = {
        "TASK_MAX_ATTEMPTS": str(args.attempts),
        "WEBHOOK_MAX_ATTEMPTS": "30",
        "WEBHOOK_MAX_DELAY_S": "5",  # a receiver back after seconds is tried again within seconds
        "MAX_WAITING_TASKS": str(args.tasks + 1000),
    }
    load_before = os.getloadavg()[0]
    with service(endpoints=args.endpoints, env=env) as (url, _settings, parts):
        r = asyncio.run(drive(url, [s.url for s in parts.standins], args))
    lost = len(r["not_final"])
    print(f"machine: {machine()}; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"faults injected: {dict(r['faults'])}; webhook tries answered 500: {r['refused_500']}")
    print(f"tasks acknowledged: {r['acked']} (refusals retried: {r['refusals']}); submit phase {r['submit_s']:.1f} s, "
          f"all ended after {r['run_s']:.1f} s")
    print(f"ended: {sum(r['statuses'][s] for s in ('succeeded', 'failed', 'cancelled'))} {dict(r['statuses'])}; "
          f"lost (acknowledged, not final): {lost}")
    for why, n in r["failures"].most_common():
        print(f"    failed x{n}: {why}")
    print(f"final webhook acknowledged by the receiver: {r['acked'] - len(r['no_webhook'])}; "
          f"without one: {len(r['no_webhook'])}; webhook states: {dict(r['webhook_states'])}")
    print(f"duplicated final webhooks (tasks with > 1 distinct webhook-id): {r['dup_ids']}; "
          f"tasks whose same webhook was acknowledged more than once (allowed repeats): {r['repeats']}")
    print(f"RSS at start: {fmt_rss(r['rss_start'])}")
    print(f"RSS at end:   {fmt_rss(r['rss_end'])}")
    if r["not_final"][:5]:
        print(f"not final (first 5): {r['not_final'][:5]}")
    tot_start = sum(sum(v) for v in r["rss_start"].values())
    tot_end = sum(sum(v) for v in r["rss_end"].values())
    print(f"SUMMARY soak acked={r['acked']} ended={r['acked'] - lost} lost={lost} dup={r['dup_ids']} "
          f"no_webhook={len(r['no_webhook'])} rss_start={tot_start:.0f}MB rss_end={tot_end:.0f}MB")


if __name__ == "__main__":
    main()
