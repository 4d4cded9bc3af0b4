"""Benchmark of the ComfyUI stand-in (a script, not a test).

Starts ``python -m comfy_standin`` as a subprocess, then measures:
- start time (process spawn to the first answered ``GET /prompt``);
- closed loop: one client posts a tiny prompt (EmptyImage 8x8 -> SaveImage, unique colour so
  nothing is cached) and waits for its ``executing: null`` before the next;
- open loop: 200 prompts posted back to back by one client, until the last one is done;
- drain: 200 prompts queued behind a stalled worker, then released (the server's own rate);
- resident memory (VmRSS, and the peak VmHWM) of the server process.

usage: python bench/standin_bench.py [--closed 500] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from comfy_standin.testing import StandInProcess

REAL = {"closed_per_s": (270, 460), "drain_per_s": (275, 306), "rss_mb": 1140, "start_s": 5.2}


def tiny(i: int, prefix: str) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": i % 0xFFFFFF},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Done:
    """Reads one websocket and signals the prompt ids that reached ``executing: null``."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.cond = asyncio.Event()

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            if m["type"] == "executing" and m["data"]["node"] is None:
                pid = m["data"]["prompt_id"]
                self.finished.add(pid)
                fut = self.waiters.pop(pid, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                self.cond.set()

    async def wait(self, pid: str) -> None:
        if pid in self.finished:
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters[pid] = fut
        await fut

    async def wait_all(self, pids: list[str]) -> None:
        while not all(p in self.finished for p in pids):
            self.cond.clear()
            await self.cond.wait()


async def run(url: str, closed_n: int, burst_n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(url) as http:
        # No permessage-deflate, as the recorder of the real figures (compression=None).
        ws = await http.ws_connect("/ws?clientId=bench", compress=0)
        deflate_ws = await http.ws_connect("/ws?clientId=bench-deflate")  # permessage-deflate
        deflate_done = Done()
        deflate_reader = asyncio.create_task(deflate_done.read(deflate_ws))
        done = Done()
        reader = asyncio.create_task(done.read(ws))

        async def post(i: int, prefix: str, client: str = "bench") -> str:
            body = {"prompt": tiny(i, prefix), "client_id": client}
            async with http.post("/prompt", json=body) as r:
                return (await r.json())["prompt_id"]

        for i in range(20):  # warm-up
            await done.wait(await post(i, "warm"))
        t0 = time.perf_counter()
        for i in range(closed_n):
            await done.wait(await post(1000 + i, "closed"))
        out["closed_per_s"] = closed_n / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(closed_n):
            await deflate_done.wait(await post(50000 + i, "deflate", "bench-deflate"))
        out["closed_deflate_per_s"] = closed_n / (time.perf_counter() - t0)
        deflate_reader.cancel()
        await deflate_ws.close()

        t0 = time.perf_counter()
        # One client posting back to back, as the recorded open-loop figure.
        pids = [await post(100000 + i, "burst") for i in range(burst_n)]
        await done.wait_all(pids)
        out["burst_per_s"] = burst_n / (time.perf_counter() - t0)

        await http.post("/_standin/knobs", json={"stall_worker": True})
        pids = [await post(200000 + i, "drain") for i in range(burst_n)]
        t0 = time.perf_counter()
        await http.post("/_standin/knobs", json={"stall_worker": False})
        await done.wait_all(pids)
        out["drain_per_s"] = burst_n / (time.perf_counter() - t0)
        reader.cancel()
        await ws.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--closed", type=int, default=500)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument(
        "--dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the input/output folders go (default: /dev/shm, a RAM disk)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="standin-bench-", dir=args.dir) as tmp:
        proc = StandInProcess(
            input_dir=Path(tmp) / "in", output_dir=Path(tmp) / "out", temp_dir=Path(tmp) / "temp"
        )
        t0 = time.perf_counter()
        proc.start()
        start_s = time.perf_counter() - t0
        assert proc.proc is not None
        pid = proc.proc.pid
        rss_start = vm(pid, "VmRSS")
        try:
            figures = asyncio.run(run(proc.url, args.closed, args.burst))
            rss_end, rss_peak = vm(pid, "VmRSS"), vm(pid, "VmHWM")
        finally:
            proc.stop()
    print(f"start to ready          {start_s * 1000:8.0f} ms   (real: ~{REAL['start_s']} s)")
    print(f"closed loop (1 client)  {figures['closed_per_s']:8.0f} prompts/s (real: 270-460)")
    print(
        f"closed, deflate socket  {figures['closed_deflate_per_s']:8.0f} prompts/s"
        " (client offers permessage-deflate)"
    )
    print(
        f"open loop, {args.burst} back2back{figures['burst_per_s']:8.0f} prompts/s (real: 380-410)"
    )
    print(
        f"drain of {args.burst} queued     {figures['drain_per_s']:8.0f} prompts/s (real: 275-306)"
    )
    print(
        f"RSS after start / end   {rss_start:8.0f} / {rss_end:.0f} MB, peak {rss_peak:.0f} MB"
        f" (real: ~{REAL['rss_mb']} MB)"
    )
    ratio = figures["closed_per_s"] / REAL["closed_per_s"][1]
    print(
        f"SUMMARY standin: ready {start_s:.2f}s, closed {figures['closed_per_s']:.0f}/s "
        f"({ratio:.1f}x the real best), burst {figures['burst_per_s']:.0f}/s, drain "
        f"{figures['drain_per_s']:.0f}/s, RSS {rss_peak:.0f} MB peak "
        f"({rss_peak / REAL['rss_mb'] * 100:.0f}% of the real server)"
    )


if __name__ == "__main__":
    main()
