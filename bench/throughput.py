"""Throughput: N tasks over E stand-in endpoints at C concurrent clients, first submit to last
webhook; beside it, the same prompts driven straight at the stand-ins by a minimal client.

    .venv/bin/python bench/throughput.py [--tasks 2000] [--endpoints 4] [--clients 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson

from bench.common import DirectClient, Receiver, cpu_report, cpu_snapshot, machine, service, tiny_prompt


async def drive(url: str, tasks: int, clients: int, receiver: Receiver) -> dict[str, float]:
    acked: list[str] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(tasks):
        queue.put_nowait(i)
    # aiohttp: the load generator must cost little of the machine it measures.
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = orjson.dumps({"workflow": "solid", "params": {"width": 8, "height": 8, "color": i},
                                     "callback_url": receiver.url})
                for _ in range(20):
                    async with http.post(f"{url}/tasks", data=body,
                                         headers={"content-type": "application/json"}) as r:
                        payload = await r.read()
                        if r.status == 202:
                            acked.append(orjson.loads(payload)["task_id"])
                            break
                        errors += 1
                        retry = float(r.headers.get("retry-after", "0.5"))
                    await asyncio.sleep(retry)

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        submitted = time.monotonic()
        deadline = submitted + 300
        while time.monotonic() < deadline and sum(1 for t in acked if receiver.by_task.get(t)) < len(acked):
            await asyncio.sleep(0.05)
    last = max((ts[0] for t in acked for ts in [receiver.by_task.get(t, [])] if ts), default=time.monotonic())
    lost = sum(1 for t in acked if not receiver.by_task.get(t))
    return {
        "acked": len(acked), "lost": lost, "duplicates": receiver.duplicates(), "refusals": errors,
        "submit_s": submitted - start, "total_s": last - start, "rate": len(acked) / (last - start),
    }


async def direct(urls: list[str], tasks: int, clients: int) -> float:
    cs = [DirectClient(u) for u in urls]
    for c in cs:
        await c.start()
    counter = iter(range(tasks))

    async def worker(k: int) -> None:
        c = cs[k % len(cs)]
        for i in counter:
            await c.run(tiny_prompt(i))

    start = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.monotonic() - start
    for c in cs:
        await c.close()
    return tasks / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=None, help="ingress replicas")
    ap.add_argument("--depth", type=int, default=None, help="ENDPOINT_QUEUE_DEPTH")
    args = ap.parse_args()
    env = {"INGRESS_REPLICAS": str(args.replicas)} if args.replicas else {}
    if args.depth:
        env["ENDPOINT_QUEUE_DEPTH"] = str(args.depth)
    with service(endpoints=args.endpoints, env=env) as (url, _settings, parts):

        async def run() -> tuple[dict[str, float], float, str]:
            receiver = Receiver()
            await receiver.start()
            try:
                before = cpu_snapshot()
                fleet = await drive(url, args.tasks, args.clients, receiver)
                cpu = cpu_report(before, cpu_snapshot(), int(fleet["acked"]))
            finally:
                await receiver.stop()
            rate_direct = await direct([s.url for s in parts.standins], args.tasks, args.clients)
            return fleet, rate_direct, cpu

        fleet, rate_direct, cpu = asyncio.run(run())
    print(f"machine: {machine()}")
    print(f"tasks acknowledged: {fleet['acked']:.0f}, lost: {fleet['lost']:.0f}, "
          f"duplicated webhooks: {fleet['duplicates']:.0f}, refusals retried: {fleet['refusals']:.0f}")
    print(f"submit phase: {fleet['submit_s']:.1f} s; first submit to last webhook: {fleet['total_s']:.1f} s")
    print(f"comfy-fleet: {fleet['rate']:.1f} tasks/s; direct to the stand-ins: {rate_direct:.1f} prompts/s; "
          f"ratio comfy-fleet/direct: {fleet['rate'] / rate_direct:.3f}")
    print(cpu)
    print(f"SUMMARY throughput tasks={fleet['acked']:.0f} endpoints={args.endpoints} clients={args.clients} "
          f"rate={fleet['rate']:.1f}/s direct={rate_direct:.1f}/s lost={fleet['lost']:.0f} "
          f"dup={fleet['duplicates']:.0f}")


if __name__ == "__main__":
    main()
