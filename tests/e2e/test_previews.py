"""Live previews (CONTRACT §7.6) through the whole service: `GET /tasks/{id}/stream?previews=true`
relays the latent previews the stand-in's sampler sends while a text2img task runs, as
`event: preview` lines without `id:`; without the flag nothing changes; the log holds none."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: The sampler of text2img (20 steps) takes this long on the stand-ins, so the task runs while
#: the stream watches it.
SAMPLER_S = 3.0


async def _knobs(url: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """Set knobs; returns their values before."""
    async with httpx.AsyncClient() as c:
        before = (await c.get(f"{url}/_standin/knobs")).json()
        r = await c.post(f"{url}/_standin/knobs", json=knobs)
        assert r.status_code == 200, r.text
        return {k: before[k] for k in knobs}


async def _stream(fleet: Fleet, task_id: str, **params: str) -> list[dict[str, str]]:
    """Every frame of the task's stream, to its end (each a dict of its fields)."""
    frames: list[dict[str, str]] = []
    async with fleet.http.stream(
        "GET", f"/tasks/{task_id}/stream", params=params, timeout=60
    ) as resp:
        assert resp.status_code == 200
        block: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if block:
                    frames.append(block)
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                block[key] = value
    return frames


async def _text2img(fleet: Fleet, seed: int) -> str:
    r = await fleet.http.post(
        "/tasks", json={"workflow": "text2img", "params": {"text": "a lighthouse", "seed": seed}}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


@pytest.fixture
async def slow_sampler(fleet: Fleet) -> Any:
    before = [
        await _knobs(s.url, {"node_delays": {"SamplerCustomAdvanced": SAMPLER_S}})
        for s in fleet.standins
    ]
    try:
        yield
    finally:
        for s, knobs in zip(fleet.standins, before, strict=True):
            await _knobs(s.url, knobs)


async def test_a_stream_with_previews_relays_the_sampler_s_previews(
    fleet: Fleet, slow_sampler: None
) -> None:
    task_id = await _text2img(fleet, seed=1)
    frames = await _stream(fleet, task_id, previews="true")
    previews = [f for f in frames if f.get("event") == "preview"]
    assert previews, [f.get("event") for f in frames]
    for frame in previews:
        assert "id" not in frame  # not an event of the task
        body = json.loads(frame["data"])
        assert body["content_type"] == "image/jpeg"
        image = Image.open(io.BytesIO(base64.b64decode(body["data"])))
        assert image.format == "JPEG" and image.size == (128, 128)  # 1024² / 8
    # the task's events still come, all of them, in order, and end the stream
    events = [f for f in frames if "id" in f]
    assert [int(f["id"]) for f in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "task.succeeded"
    # the log holds no preview
    logged = (await fleet.http.get(f"/tasks/{task_id}/events")).json()
    assert [e["type"] for e in logged] == [f["event"] for f in events]
    assert not [e for e in logged if "preview" in e["type"]]


async def test_a_stream_without_the_flag_has_no_previews(fleet: Fleet, slow_sampler: None) -> None:
    task_id = await _text2img(fleet, seed=2)
    frames = await _stream(fleet, task_id)
    assert frames and not [f for f in frames if f["event"] == "preview"]
    # every other frame is an event of the task (queue lines, CONTRACT §7.6, have no id either)
    assert all("id" in f for f in frames if f["event"] != "queue"), frames
    assert frames[-1]["event"] == "task.succeeded"


async def test_a_client_that_leaves_mid_task_does_not_disturb_it(
    fleet: Fleet, slow_sampler: None
) -> None:
    task_id = await _text2img(fleet, seed=3)
    async with fleet.http.stream(
        "GET", f"/tasks/{task_id}/stream", params={"previews": "true"}, timeout=60
    ) as resp:
        async for line in resp.aiter_lines():
            if line == "event: preview":
                break  # leave at the first preview
    assert (await fleet.wait_final(task_id))["status"] == "succeeded"
    # a new watcher of the ended task gets its events and no preview
    frames = await asyncio.wait_for(_stream(fleet, task_id, previews="true"), 30)
    assert frames[-1]["event"] == "task.succeeded"
    assert not [f for f in frames if f.get("event") == "preview"]
