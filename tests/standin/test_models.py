"""The stand-in serves the comfy-fleet extension's model routes (the extension's own code), and
its loaders list a pulled model, as the real server's do once their file list is refreshed."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_standin.testing import run_standin

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def bucket() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """(the bucket's URL, its objects by key), served over HTTP."""
    objects: dict[str, bytes] = {}

    async def get(request: web.Request) -> web.Response:
        data = objects.get(request.match_info["key"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    app = web.Application()
    app.router.add_get("/bucket/{key:.*}", get)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/bucket", objects
    finally:
        await server.close()


def _choices(info: dict, class_type: str, name: str) -> list[str]:
    spec = info[class_type]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def checkpoint_prompt(ckpt_name: str) -> dict:
    """A prompt that loads the checkpoint `ckpt_name` and previews one sampled image."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
            "3": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "4": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                "latent_image": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
            "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}


async def test_a_pulled_lora_appears_in_object_info_and_stays_after_a_restart(bucket) -> None:
    url, objects = bucket
    data = b"lora bytes" * 100
    sha = hashlib.sha256(data).hexdigest()
    objects[f"models/{sha}"] = data
    name = f"fleet/{sha[:16]}.safetensors"
    body = {"url": f"{url}/models/{sha}?X-Amz-Signature=x", "sha256": sha, "folder": "loras",
            "filename": name}
    async with run_standin(models={"loras": ["configured.safetensors"]},
                           model_bucket_url=url) as s, httpx.AsyncClient(base_url=s.url) as c:
        info = (await c.get("/comfy-fleet/models/info")).json()
        assert info["version"] == 1 and info["configured"] is True
        before = (await c.get("/object_info")).json()
        assert _choices(before, "LoraLoader", "lora_name") == ["configured.safetensors"]
        resp = await c.post("/comfy-fleet/models/pull", json=body)
        assert resp.status_code == 200 and resp.json()["fetched"] is True, resp.text
        after = (await c.get("/object_info")).json()
        for class_type in ("LoraLoader", "LoraLoaderModelOnly"):
            assert _choices(after, class_type, "lora_name") == ["configured.safetensors", name]
        node = (await c.get("/api/object_info/LoraLoader")).json()
        assert name in _choices(node, "LoraLoader", "lora_name")
        assert (await c.get("/models/loras")).json() == ["configured.safetensors", name]
        assert [m["sha256"] for m in (await c.get("/comfy-fleet/models")).json()["models"]] == [sha]
        again = await c.post("/api/comfy-fleet/models/pull", json=body)
        assert again.status_code == 200 and again.json()["fetched"] is False
        assert (s.counters.model_pulls, s.counters.models_fetched) == (2, 1)
        await s.restart()
        restarted = (await c.get("/object_info")).json()
        assert name in _choices(restarted, "LoraLoader", "lora_name")


async def test_a_pulled_checkpoint_is_a_choice_a_prompt_may_use(bucket) -> None:
    url, objects = bucket
    data = b"ckpt" * 50
    sha = hashlib.sha256(data).hexdigest()
    objects[f"models/{sha}"] = data
    async with run_standin(model_bucket_url=url) as s, httpx.AsyncClient(base_url=s.url) as c:
        refused = await c.post("/prompt", json={"prompt": checkpoint_prompt("m.safetensors")})
        assert refused.status_code == 400
        assert refused.json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
        pull = {"url": f"{url}/models/{sha}", "sha256": sha, "folder": "checkpoints",
                "filename": "m.safetensors"}
        assert (await c.post("/comfy-fleet/models/pull", json=pull)).status_code == 200
        accepted = await c.post("/prompt", json={"prompt": checkpoint_prompt("m.safetensors")})
        assert accepted.status_code == 200, accepted.text


async def test_a_file_copied_into_a_model_folder_is_listed_until_it_is_removed() -> None:
    """As on the real server, whose file lists are read again once a folder changed: what an
    operator copies onto the host, or takes off it, shows at the next look, with no restart."""
    prompt = checkpoint_prompt("sub/copied.safetensors")
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        info = (await c.get("/object_info")).json()
        assert _choices(info, "CheckpointLoaderSimple", "ckpt_name") == []
        copied = s.models_dir / "checkpoints" / "sub" / "copied.safetensors"
        copied.parent.mkdir(parents=True)
        copied.write_bytes(b"weights")
        (s.models_dir / "checkpoints" / "notes.txt").write_text("not a model")  # not listed
        info = (await c.get("/object_info")).json()
        assert _choices(info, "CheckpointLoaderSimple", "ckpt_name") == ["sub/copied.safetensors"]
        node = (await c.get("/object_info/unCLIPCheckpointLoader")).json()
        assert _choices(node, "unCLIPCheckpointLoader", "ckpt_name") == ["sub/copied.safetensors"]
        assert (await c.get("/models/checkpoints")).json() == ["sub/copied.safetensors"]
        assert (await c.post("/prompt", json={"prompt": prompt})).status_code == 200
        copied.unlink()
        refused = await c.post("/prompt", json={"prompt": prompt})
        assert refused.status_code == 400
        assert refused.json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
        assert (await c.get("/models/checkpoints")).json() == []


async def test_the_stand_in_refuses_as_the_extension_does(bucket) -> None:
    url, objects = bucket
    data = b"x" * 10
    sha = hashlib.sha256(data).hexdigest()
    objects[f"models/{sha}"] = b"not x"
    base = {"url": f"{url}/models/{sha}", "sha256": sha, "folder": "loras",
            "filename": "a.safetensors"}
    cases = [
        ({}, 422, "model_checksum_mismatch"),
        ({"url": f"{url}x/models/{sha}"}, 403, "url_forbidden"),
        ({"filename": "../a.safetensors"}, 400, "invalid_filename"),
        ({"folder": "custom_nodes"}, 400, "invalid_folder"),
        ({"sha256": "nope"}, 400, "bad_request"),
    ]
    async with run_standin(model_bucket_url=url) as s, httpx.AsyncClient(base_url=s.url) as c:
        for change, status, code in cases:
            resp = await c.post("/comfy-fleet/models/pull", json={**base, **change})
            assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), change
        assert (await c.get("/comfy-fleet/models")).json()["models"] == []
        s.knobs.models_extension = False  # a ComfyUI without the extension's model routes
        assert (await c.get("/comfy-fleet/models/info")).status_code == 404
        assert (await c.post("/comfy-fleet/models/pull", json=base)).status_code == 404
        s.knobs.models_extension = True
        s.knobs.model_bucket_url = ""  # with the extension, but no bucket configured
        info = (await c.get("/comfy-fleet/models/info")).json()
        assert info["configured"] is False
        assert (await c.post("/comfy-fleet/models/pull", json=base)).status_code == 503
