"""Metrics on Ray's metrics endpoint, structured logs, and live progress (SSE)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
import ray

from tests.support.fleet import Fleet, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

EXPECTED = {
    "ray_comfy_fleet_endpoint_queue_depth": {"endpoint"},
    "ray_comfy_fleet_endpoint_inflight": {"endpoint"},
    "ray_comfy_fleet_endpoint_connected": {"endpoint"},
    "ray_comfy_fleet_router_waiting_tasks": set(),
    "ray_comfy_fleet_tasks_ended_total": {"workflow", "status"},
    "ray_comfy_fleet_webhook_tries_total": {"outcome"},
    "ray_comfy_fleet_websocket_reconnects_total": {"endpoint"},
    "ray_comfy_fleet_queue_wait_seconds_bucket": {"workflow"},
    "ray_comfy_fleet_comfyui_run_seconds_bucket": {"workflow"},
    "ray_comfy_fleet_output_store_seconds_bucket": {"workflow"},
    "ray_comfy_fleet_end_to_end_seconds_bucket": {"workflow"},
}

LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? ")


def parse(text: str) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        found.setdefault(m.group("name"), []).append(labels)
    return found


async def test_metrics_are_exported_with_their_labels(fleet: Fleet, receiver: Receiver) -> None:
    ids = []
    for i in range(3):
        r = await fleet.http.post(
            "/tasks",
            json={"workflow": "solid", "params": {"width": 8, "height": 8 + i}, "callback_url": receiver.url},
        )
        ids.append(r.json()["task_id"])
    for t in ids:
        await fleet.wait_final(t)
        await receiver.wait_for(t)
    port = ray.nodes()[0]["MetricsExportPort"]
    missing: dict[str, set[str]] = dict(EXPECTED)
    async with httpx.AsyncClient() as c:
        for _ in range(60):
            found = parse((await c.get(f"http://127.0.0.1:{port}/metrics")).text)
            missing = {
                name: keys
                for name, keys in EXPECTED.items()
                if not any(keys <= set(lbl) for lbl in found.get(name, []))
            }
            succeeded = any(
                lbl.get("workflow") == "solid" and lbl.get("status") == "succeeded"
                for lbl in found.get("ray_comfy_fleet_tasks_ended_total", [])
            )
            # Each process exports its own series, each on its own report tick.
            if not missing and succeeded:
                break
            await asyncio.sleep(1)
    assert not missing, f"not exported (or without labels): {sorted(missing)}"
    ended = [lbl for lbl in found["ray_comfy_fleet_tasks_ended_total"] if lbl.get("workflow") == "solid"]
    assert any(lbl["status"] == "succeeded" for lbl in ended)
    endpoints = {lbl["endpoint"] for lbl in found["ray_comfy_fleet_endpoint_connected"]}
    assert {s.host_port for s in fleet.standins} <= endpoints


async def test_stream_sends_events_live_and_resumes(fleet: Fleet) -> None:
    r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8}})
    task_id = r.json()["task_id"]
    seen: list[tuple[int, str]] = []
    async with fleet.http.stream("GET", f"/tasks/{task_id}/stream", timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        block: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if "id" in block:
                    seen.append((int(block["id"]), block["event"]))
                block = {}
                continue
            key, _, value = line.partition(": ")
            block[key] = value
    types = [t for _, t in seen]
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    assert types[0] == "task.submitted" and "task.succeeded" in types
    # Resume after the second event: only what follows comes again, then the stream ends.
    async with fleet.http.stream(
        "GET", f"/tasks/{task_id}/stream", headers={"Last-Event-ID": "2"}, timeout=30
    ) as resp:
        body = (await resp.aread()).decode()
    ids = [int(x) for x in re.findall(r"^id: (\d+)$", body, re.M)]
    assert ids == [s for s, _ in seen if s > 2]
