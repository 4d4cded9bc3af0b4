"""The original ComfyUI-server route end to end: its request as its clients send it, its answer and
its webhook field for field (docs/legacy-api.md), with our task under "task"."""

from __future__ import annotations

import base64
import io
import uuid

import httpx
import pytest
from PIL import Image

from comfy_fleet.delivery import webhooks
from comfy_fleet import legacy_record
from tests.support.fleet import WEBHOOK_SECRET, Fleet, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

RECORD = set(legacy_record.RECORD_FIELDS)


async def post_legacy(fleet: Fleet, body: dict) -> httpx.Response:
    # POST {ROUTE_PREFIX} itself: no trailing slash, as the prototype's clients call it.
    return await fleet.http.post(fleet.url, json=body)


async def test_text2img_request_answer_and_webhook_have_the_prototype_fields(
    fleet: Fleet, receiver: Receiver
) -> None:
    client_task_id = f"legacy-{uuid.uuid4().hex[:8]}"
    body = {
        "service_type": "text2img",
        "client_task_id": client_task_id,
        "client_callback_url": receiver.url,
        "params": {"text": "a lighthouse at dusk"},
    }
    r = await post_legacy(fleet, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == RECORD | {"task"}
    task = answer["task"]
    assert answer["id"] == task["task_id"]
    assert answer["client_task_id"] == client_task_id and task["client_task_id"] == client_task_id
    assert answer["client_callback_url"] == receiver.url == task["callback_url"]
    assert (
        answer["error_code"] == 0
        and answer["s3_key"] is None
        and answer["comfyui_filepath"] is None
    )
    assert task["workflow"] == "text2img"

    calls = await receiver.wait_for(task["task_id"])
    hook = calls[0]
    assert webhooks.verify(webhooks.parse_secret(WEBHOOK_SECRET), hook["headers"], hook["body"])
    sent = hook["json"]
    assert set(sent) == RECORD | {"task", "type"}
    assert sent["type"] == "task.succeeded"
    final = sent["task"]
    assert final["status"] == "succeeded" and final["outputs"]
    assert sent["id"] == answer["id"] and sent["client_task_id"] == client_task_id
    assert sent["client_callback_url"] == receiver.url
    assert sent["comfyui_task_id"] == final["comfyui_task_id"] and sent["comfyui_task_id"]
    assert sent["s3_key"] == final["outputs"][0]["s3_key"]
    assert sent["comfyui_filepath"].endswith("/" + final["outputs"][0]["filename"])
    assert sent["error_code"] == 0
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(final["outputs"][0]["url"])).status_code == 200

    # The same request again is the same task (nothing new runs); GET shows it as /tasks does.
    again = await post_legacy(fleet, body)
    assert again.status_code == 200 and again.json()["id"] == answer["id"]
    assert again.json()["s3_key"] == sent["s3_key"]


async def test_img2img_takes_the_image_as_base64(fleet: Fleet, receiver: Receiver) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="PNG")
    r = await post_legacy(
        fleet,
        {
            "service_type": "img2img",
            "client_task_id": f"legacy-{uuid.uuid4().hex[:8]}",
            "client_callback_url": receiver.url,
            "params": {
                "text": "the same, at night",
                "image": base64.b64encode(buf.getvalue()).decode(),
            },
        },
    )
    assert r.status_code == 200, r.text
    calls = await receiver.wait_for(r.json()["id"])
    assert calls[0]["json"]["type"] == "task.succeeded" and calls[0]["json"]["error_code"] == 0


async def test_a_failed_task_reports_its_error_code(fleet: Fleet, receiver: Receiver) -> None:
    async with httpx.AsyncClient() as c:
        for s in fleet.standins:
            await c.post(
                f"{s.url}/_standin/knobs", json={"fail": [{"node": "SaveImage", "count": 1}]}
            )
        try:
            r = await post_legacy(
                fleet,
                {
                    "service_type": "solid",
                    "client_task_id": f"legacy-{uuid.uuid4().hex[:8]}",
                    "client_callback_url": receiver.url,
                    "params": {"width": 8, "height": 8},
                },
            )
            assert r.status_code == 200, r.text
            calls = await receiver.wait_for(r.json()["id"])
        finally:
            for s in fleet.standins:
                await c.post(f"{s.url}/_standin/knobs", json={"fail": []})
    sent = calls[0]["json"]
    assert (
        sent["type"] == "task.failed" and sent["task"]["error"]["code"] == "comfyui_execution_error"
    )
    assert sent["error_code"] == legacy_record.OTHER and sent["s3_key"] is None


async def test_refusals_use_the_api_error_shape_and_record_nothing(fleet: Fleet) -> None:
    before = len((await fleet.http.get("/tasks", params={"limit": 500})).json()["tasks"])
    r = await post_legacy(fleet, {"service_type": "nope", "client_task_id": "x", "params": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_workflow"
    r = await post_legacy(fleet, {"service_type": "text2img", "client_task_id": "y", "params": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "params_invalid"
    r = await post_legacy(
        fleet,
        {
            "service_type": "text2img",
            "client_task_id": "z",
            "client_callback_url": "http://169.254.169.254/hook",
            "params": {"text": "a"},
        },
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "url_forbidden"
    after = len((await fleet.http.get("/tasks", params={"limit": 500})).json()["tasks"])
    assert after == before
