"""The task path end to end through real Ray Serve HTTP, PostgreSQL, SeaweedFS and stand-ins."""

from __future__ import annotations

import asyncio
import hashlib
import io

import httpx
import pytest
from PIL import Image

from comfy_fleet.delivery import webhooks
from tests.support.fleet import WEBHOOK_SECRET, Fleet, Receiver
from tests.support.polling import eventually

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


async def _knobs(url: str, knobs: dict) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_standin/knobs", json=knobs)
        assert r.status_code == 200, r.text


async def test_execution_error_fails_task_with_node_details(fleet: Fleet, receiver: Receiver) -> None:
    for s in fleet.standins:
        await _knobs(s.url, {"fail": [{"node": "SaveImage", "count": 1,
                                       "exception_type": "RuntimeError",
                                       "exception_message": "disk on fire"}]})
    try:
        r = await fleet.http.post(
            "/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8}, "callback_url": receiver.url}
        )
        assert r.status_code == 202, r.text
        final = await fleet.wait_final(r.json()["task_id"])
    finally:
        for s in fleet.standins:
            await _knobs(s.url, {"fail": []})
    assert final["status"] == "failed"
    err = final["error"]
    assert err["code"] == "comfyui_execution_error"
    assert err["node_type"] == "SaveImage" and err["node_id"]
    assert "disk on fire" in err["message"]
    calls = await receiver.wait_for(final["task_id"])
    assert len(calls) == 1 and calls[0]["json"]["type"] == "task.failed"
    assert calls[0]["json"]["task"]["error"]["node_type"] == "SaveImage"


async def test_webhook_500_twice_then_200_is_delivered_on_third_try(fleet: Fleet, receiver: Receiver) -> None:
    receiver.script = [500, 500, 200]
    r = await fleet.http.post(
        "/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8}, "callback_url": receiver.url}
    )
    task_id = r.json()["task_id"]
    calls = await receiver.wait_for(task_id, timeout=60)
    assert [c["status"] for c in calls] == [500, 500, 200]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1

    async def tries() -> list[tuple[str, int]] | None:
        # The delivery is recorded after the receiver's answer: wait for that append.
        evs = (await fleet.http.get(f"/tasks/{task_id}/events")).json()
        got = [(e["type"], e["data"].get("attempt")) for e in evs if e["type"].startswith("webhook.")]
        return got if any(t == "webhook.delivered" for t, _ in got) else None

    hooks = await eventually(tries, timeout=10, what="webhook.delivered recorded")
    assert hooks == [("webhook.attempted", 1), ("webhook.attempted", 2), ("webhook.delivered", 3)]
    task = (await fleet.http.get(f"/tasks/{task_id}")).json()
    assert task["webhook"] == "delivered"


async def test_client_task_id_is_idempotent(fleet: Fleet) -> None:
    body = {"workflow": "solid", "params": {"width": 8, "height": 9}, "client_task_id": f"order-{id(fleet)}"}
    first = await fleet.http.post("/tasks", json=body)
    again = await fleet.http.post("/tasks", json=body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["task_id"] == first.json()["task_id"]
    other = await fleet.http.post("/tasks", json={**body, "params": {"width": 9, "height": 9}})
    assert other.status_code == 409 and other.json()["error"]["code"] == "client_task_id_conflict"
    listed = (await fleet.http.get("/tasks", params={"client_task_id": body["client_task_id"]})).json()
    assert [t["task_id"] for t in listed["tasks"]] == [first.json()["task_id"]]


async def test_unknown_workflow_and_bad_params_record_nothing(fleet: Fleet) -> None:
    before = len((await fleet.http.get("/tasks", params={"limit": 500})).json()["tasks"])
    r = await fleet.http.post("/tasks", json={"workflow": "nope", "params": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_workflow"
    r = await fleet.http.post("/tasks", json={"workflow": "solid", "params": {"width": "wide"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "params_invalid"
    r = await fleet.http.post("/tasks", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    after = len((await fleet.http.get("/tasks", params={"limit": 500})).json()["tasks"])
    assert after == before


async def test_wait_returns_the_final_task(fleet: Fleet) -> None:
    r = await fleet.http.post("/tasks", params={"wait": 30}, json={"workflow": "solid", "params": {"width": 8, "height": 8}})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded" and r.json()["outputs"]


async def test_endpoints_and_health(fleet: Fleet) -> None:
    eps = (await fleet.http.get("/endpoints")).json()
    assert {e["endpoint"] for e in eps} == {s.host_port for s in fleet.standins}
    assert all(e["state"] == "connected" for e in eps)
    assert (await fleet.http.get("/healthz")).json() == {"status": "ok"}
    ready = (await fleet.http.get("/readyz")).json()
    assert ready["ready"] and ready["database"] == "ok"
    wfs = {w["name"]: w for w in (await fleet.http.get("/workflows")).json()}
    assert {"solid", "invert", "text2img", "img2img"} <= set(wfs)
    assert wfs["solid"]["params"]["type"] == "object"
