"""EndpointWorker.preview (actors/endpoint.py) without Ray, against a real in-process ComfyUI
stand-in whose sampler sends latent previews over the worker's websocket: the latest one of a
running task is answered by version, nothing is kept once the prompt ends, and the log never
holds a preview."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from actors import endpoint as endpoint_module
from actors.endpoint import ACCEPTED, EndpointWorker
from comfy_fleet import storage
from comfy_fleet.config import Settings, parse_endpoint
from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_standin.testing import RunningStandIn, run_standin
from tests.support.polling import eventually

pytestmark = pytest.mark.timeout(60)

STEPS = 6


def sampler_prompt(seed: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["3", 0], "negative": ["3", 0],
            "latent_image": ["2", 0], "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "pv"}},
    }


@pytest.fixture(autouse=True)
def fast_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint_module, "POLL_INTERVAL_S", 0.2)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[RunningStandIn, InMemoryEventLog, EndpointWorker]]:
    async with run_standin(models={"checkpoints": ["m.safetensors"]}) as s:
        log = InMemoryEventLog()

        class Router:
            async def endpoint_status(self, name: str, status: dict[str, Any]) -> None:
                return None

        w = EndpointWorker(
            parse_endpoint(s.host_port), settings=Settings(default_failed_image_path=tmp_path),
            log=log, store=storage.InMemoryBlobStore(), router=Router(),
        )
        await w.start()
        await eventually(lambda: w.connected, what="worker connected")
        try:
            yield s, log, w
        finally:
            await w.stop()


async def submit(log: InMemoryEventLog, seed: int) -> str:
    task_id = str(uuid.uuid4())
    await log.append(task_id, 0, [events.TaskSubmitted(
        workflow="sampler", workflow_version="1", params={}, prompt=sampler_prompt(seed),
    )])
    return task_id


async def test_a_running_task_s_latest_preview_is_answered_by_version_and_dropped_at_its_end(
    rig: tuple[RunningStandIn, InMemoryEventLog, EndpointWorker],
) -> None:
    standin, log, w = rig
    standin.knobs.node_delays = {"KSampler": 3.0}  # six steps, one preview each
    task_id = await submit(log, seed=1)
    assert await w.dispatch(task_id) == ACCEPTED

    first = await w.preview(task_id, 0, 10)
    assert first is not None and first["content_type"] == "image/jpeg"
    image = Image.open(io.BytesIO(first["data"]))
    assert (image.format, image.size) == ("JPEG", (32, 32))  # the latent's size
    second = await w.preview(task_id, first["version"], 10)
    assert second is not None and second["version"] != first["version"]
    assert len(w.previews) == 1  # one image per task, the latest

    # a watcher waiting when the prompt ends gets nothing, and nothing is left behind
    waiting = asyncio.create_task(w.preview(task_id, second["version"], 25))
    state = await eventually(_final(log, task_id), timeout=30, what="the task to end")
    assert state.status == "succeeded"
    last = await waiting
    assert last is None or last["version"] != second["version"]  # a last step, or the end
    assert await w.preview(task_id, 0, 10) is None  # no longer in flight: at once
    assert len(w.previews) == 0 and w.previews.watchers() == 0
    assert not [e for e in await log.read(task_id) if "preview" in e.event.TYPE]


async def test_a_task_it_does_not_hold_has_no_preview(
    rig: tuple[RunningStandIn, InMemoryEventLog, EndpointWorker],
) -> None:
    _standin, _log, w = rig
    assert await w.preview(str(uuid.uuid4()), 0, 10) is None
    assert w.previews.watchers() == 0


async def test_without_previews_from_comfyui_a_watcher_gets_nothing(
    rig: tuple[RunningStandIn, InMemoryEventLog, EndpointWorker],
) -> None:
    standin, log, w = rig
    standin.knobs.preview_method = "none"
    standin.knobs.node_delays = {"KSampler": 1.0}
    task_id = await submit(log, seed=2)
    assert await w.dispatch(task_id) == ACCEPTED
    assert await w.preview(task_id, 0, 25) is None  # woken by the prompt's end
    assert (await eventually(_final(log, task_id), timeout=30)).status == "succeeded"
    assert len(w.previews) == 0


def _final(log: InMemoryEventLog, task_id: str) -> Any:
    async def ended() -> Any:
        state = await log.get(task_id)
        return state if state.is_final else None

    return ended
