"""The stand-in's latent previews: binary frames after each sampler step, as a real ComfyUI
run with `--preview-method` other than none sends them (protocol §3.6), to the prompt's
client only; none with the knob `preview_method` "none" (the real server's default)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from comfy_standin.testing import run_standin

try:
    from test_server import WS, post, types
except ImportError:  # collected as part of a package
    from .test_server import WS, post, types

pytestmark = pytest.mark.timeout(60)

MODELS = {"checkpoints": ["m.safetensors"]}


def sampler_graph(steps: int, seed: int = 1, size: int = 512) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["3", 0], "negative": ["3", 0],
            "latent_image": ["2", 0], "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "pv"}},
    }


async def test_a_sampler_sends_a_jpeg_preview_after_each_step_to_its_client_only() -> None:
    async with run_standin(models=MODELS) as s, httpx.AsyncClient(base_url=s.url) as c:
        mine, other = await WS.connect(s.host_port, "mine"), await WS.connect(s.host_port, "other")
        frames = await mine.done((await post(c, sampler_graph(3), "mine"))["prompt_id"])
        t = types(frames)
        assert t.count("binary1") == 3
        # type 1 comes just after its `progress` (protocol §3.6)
        assert all(t[i - 1] == "progress" for i, x in enumerate(t) if x == "binary1")
        blob = next(f for f in frames if isinstance(f, bytes))
        assert blob[:8] == bytes.fromhex("0000000100000001")  # PREVIEW_IMAGE, JPEG
        image = Image.open(io.BytesIO(blob[8:]))
        assert (image.format, image.size) == ("JPEG", (64, 64))  # the latent's size
        assert not any(isinstance(f, bytes) for f in other.frames)
        await mine.close()
        await other.close()


async def test_a_client_with_preview_metadata_gets_type_4_naming_the_prompt() -> None:
    async with run_standin(models=MODELS) as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "flagged")
        await ws.conn.send(
            json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        )
        await ws.wait_for(lambda f: f["type"] == "feature_flags")
        pid = (await post(c, sampler_graph(2), "flagged"))["prompt_id"]
        frames = await ws.done(pid)
        t = types(frames)
        assert t.count("binary4") == 2 and t[t.index("binary4") + 1] == "progress"
        blob = next(f for f in frames if isinstance(f, bytes))
        n = int.from_bytes(blob[4:8], "big")
        meta = json.loads(blob[8 : 8 + n])
        assert (meta["prompt_id"], meta["node_id"], meta["image_type"]) == (pid, "4", "image/jpeg")
        assert Image.open(io.BytesIO(blob[8 + n :])).format == "JPEG"
        await ws.close()


async def test_preview_method_none_sends_no_previews() -> None:
    async with run_standin(models=MODELS) as s, httpx.AsyncClient(base_url=s.url) as c:
        assert (await c.get("/_standin/knobs")).json()["preview_method"] == "auto"
        assert (await c.post("/_standin/knobs", json={"preview_method": "none"})).status_code == 200
        ws = await WS.connect(s.host_port, "quiet")
        frames = await ws.done((await post(c, sampler_graph(3, seed=2), "quiet"))["prompt_id"])
        assert types(frames).count("progress") == 3
        assert not any(isinstance(f, bytes) for f in frames)
        await ws.close()
