"""The task path end to end through real Ray Serve HTTP, PostgreSQL, SeaweedFS and stand-ins."""

from __future__ import annotations

import asyncio
import hashlib
import io

import httpx
import pytest
from PIL import Image

from core import webhooks
from tests.e2e.conftest import WEBHOOK_SECRET, Fleet, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def test_solid_task_stores_output_and_calls_webhook_once(fleet: Fleet, receiver: Receiver) -> None:
    r = await fleet.http.post(
        "/tasks",
        json={
            "workflow": "solid",
            "params": {"width": 32, "height": 16, "color": 0x3366FF},
            "callback_url": receiver.url,
        },
    )
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["status"] in ("queued", "dispatched", "running", "succeeded")
    final = await fleet.wait_final(task["task_id"])
    assert final["status"] == "succeeded", final
    assert len(final["outputs"]) == 1
    out = final["outputs"][0]
    assert out["content_type"] == "image/png"
    async with httpx.AsyncClient() as plain:
        blob = (await plain.get(out["url"])).content
    assert hashlib.sha256(blob).hexdigest() == out["sha256"] and len(blob) == out["size"]
    img = Image.open(io.BytesIO(blob))
    assert img.size == (32, 16)
    assert img.convert("RGB").getpixel((5, 5)) == (0x33, 0x66, 0xFF)

    calls = await receiver.wait_for(task["task_id"])
    await asyncio.sleep(0.5)  # a duplicate would arrive in this time
    calls = receiver.for_task(task["task_id"])
    assert len(calls) == 1
    call = calls[0]
    assert call["json"]["type"] == "task.succeeded"
    assert call["json"]["task"]["outputs"][0]["sha256"] == out["sha256"]
    key = webhooks.parse_secret(WEBHOOK_SECRET)
    assert webhooks.verify(key, call["headers"], call["body"])

    evs = (await fleet.http.get(f"/tasks/{task['task_id']}/events")).json()
    types = [e["type"] for e in evs]
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert types[0] == "task.submitted" and types[1] == "task.dispatched"
    assert types.index("task.output_stored") < types.index("task.succeeded")
    assert types[-1] == "webhook.delivered"


async def test_ten_tasks_use_both_endpoints(fleet: Fleet) -> None:
    ids = []
    for i in range(10):
        r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": 8 + i, "height": 8}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    finals = [await fleet.wait_final(t) for t in ids]
    assert all(f["status"] == "succeeded" for f in finals), finals
    used = {f["endpoint"] for f in finals}
    assert used == {s.host_port for s in fleet.standins}
