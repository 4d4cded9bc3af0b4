"""Models by URL end to end (docs/api.md §7.5) through the shipped `text2img` and its optional
LoRA: fetched into the bucket once, pulled onto each endpoint once, routed to holders, a
checksum mismatch recording nothing, and eviction under a small disk budget."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from comfy_fleet.storage.s3 import S3BlobStore
from tests.support import file_server
from tests.support.file_server import FileServer
from tests.support.fleet import Fleet
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


@pytest.fixture
async def model_server() -> AsyncIterator[FileServer]:
    """Serves model files (`add` makes one: its URL and sha256)."""
    async with file_server.serving() as server:
        yield server


@pytest.fixture
async def bucket(fleet: Fleet) -> AsyncIterator[S3BlobStore]:
    store = await S3BlobStore.from_settings(fleet.settings)
    try:
        yield store
    finally:
        await store.close()


async def run_text2img(fleet: Fleet, params: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await fleet.http.post(
        "/tasks", json={"workflow": "text2img", "params": {"text": "a cat", **params}, **body}
    )
    assert r.status_code == 202, r.text
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    return final


async def fetched_events(fleet: Fleet, task_id: str) -> list[dict[str, Any]]:
    evs = (await fleet.http.get(f"/tasks/{task_id}/events")).json()
    return [e["data"] for e in evs if e["type"] == "task.model_fetched"]


async def endpoint_models(fleet: Fleet) -> dict[str, list[str]]:
    return {e["endpoint"]: e.get("models") or [] for e in (await fleet.http.get("/endpoints")).json()}


async def set_knobs(fleet: Fleet, endpoint: str, **knobs: Any) -> None:
    async with httpx.AsyncClient() as plain:
        r = await plain.post(f"http://{endpoint}/_standin/knobs", json=knobs)
        assert r.status_code == 200, r.text


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    await eventually(check, timeout=timeout, interval=0.2)


async def test_a_model_is_fetched_once_per_bucket_and_once_per_endpoint(
    fleet: Fleet, model_server: FileServer, bucket: S3BlobStore
) -> None:
    url, sha = model_server.add("style.safetensors")
    lora = {"url": url, "sha256": sha}
    first = await run_text2img(fleet, {"lora": lora, "lora_strength": 0.8})
    holder = first["endpoint"]
    assert first["models"] == [{
        "param": "lora", "sha256": sha, "s3_key": f"models/{sha}",
        "filename": f"fleet/{sha}.safetensors",
    }]
    got = {e["where"]: e for e in await fetched_events(fleet, first["task_id"])}
    assert set(got) == {"bucket", "endpoint"}
    assert got["bucket"]["bytes"] == got["endpoint"]["bytes"] == 96 * 1024
    assert got["endpoint"]["endpoint"] == holder and got["bucket"]["seconds"] >= 0
    assert await bucket.get(f"models/{sha}") == model_server.files["style.safetensors"]
    await wait_for(lambda: _holds(fleet, holder, sha))

    # The same model again: no fetch from its URL or the bucket; the task goes to the holder.
    second = await run_text2img(fleet, {"lora": lora})
    assert second["endpoint"] == holder
    assert await fetched_events(fleet, second["task_id"]) == []
    assert model_server.hits == ["style.safetensors"]

    # The holder cannot pull models now (no extension route): the next one is pulled elsewhere.
    await set_knobs(fleet, holder, models_extension=False)
    try:
        await _reconnect(fleet, holder)
        await wait_for(lambda: _route(fleet, holder, False))
        third = await run_text2img(fleet, {"lora": lora})
        assert third["endpoint"] != holder
        evs = await fetched_events(fleet, third["task_id"])
        assert [(e["where"], e["endpoint"]) for e in evs] == [("endpoint", third["endpoint"])]
        assert model_server.hits == ["style.safetensors"]
    finally:
        await set_knobs(fleet, holder, models_extension=True)
        await _reconnect(fleet, holder)
        await wait_for(lambda: _route(fleet, holder, True))


async def test_a_checksum_mismatch_records_nothing(
    fleet: Fleet, model_server: FileServer, bucket: S3BlobStore
) -> None:
    url, sha = model_server.add("liar.safetensors")
    claimed = hashlib.sha256(b"something else").hexdigest()
    client_task_id = f"models-{uuid.uuid4()}"
    r = await fleet.http.post("/tasks", json={
        "workflow": "text2img", "client_task_id": client_task_id,
        "params": {"text": "a cat", "lora": {"url": url, "sha256": claimed}},
    })
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "model_checksum_mismatch"
    assert error["details"][0]["param"] == "lora" and error["details"][0]["actual"] == sha
    assert not await bucket.exists(f"models/{claimed}")
    assert not await bucket.exists(f"models/{sha}")
    # Nothing was recorded: the same client_task_id with the right sha256 makes a new task.
    r = await fleet.http.post("/tasks", json={
        "workflow": "text2img", "client_task_id": client_task_id,
        "params": {"text": "a cat", "lora": {"url": url, "sha256": sha}},
    })
    assert r.status_code == 202, r.text
    assert (await fleet.wait_final(r.json()["task_id"]))["status"] == "succeeded"


async def test_bad_model_values_are_refused_before_any_fetch(
    fleet: Fleet, model_server: FileServer
) -> None:
    url, sha = model_server.add("x.safetensors")
    for lora, code in (
        ({"url": url}, "params_invalid"),
        ({"url": url, "sha256": sha.upper()}, "params_invalid"),
        ({"url": "http://169.254.169.254/x", "sha256": sha}, "url_forbidden"),
        ({"url": f"http://{fleet.standins[0].host_port}/view?filename=x", "sha256": sha},
         "url_forbidden"),
        ({"url": f"http://localhost:{fleet.standins[1].host_port.rsplit(':', 1)[1]}/x",
          "sha256": sha}, "url_forbidden"),
        ({"url": f"{model_server.url}/missing", "sha256": sha}, "model_fetch_failed"),
    ):
        r = await fleet.http.post(
            "/tasks", json={"workflow": "text2img", "params": {"text": "a", "lora": lora}}
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code, r.text
    assert model_server.hits == ["missing"]


async def test_pulled_models_are_evicted_under_a_small_budget(
    fleet: Fleet, model_server: FileServer
) -> None:
    endpoints = [s.host_port for s in fleet.standins]
    old_url, old_sha = model_server.add("old.safetensors", 64 * 1024)
    new_url, new_sha = model_server.add("new.safetensors", 64 * 1024)
    # Both endpoints hold the old model, then may keep only one model of this size.
    for endpoint in endpoints:
        await set_knobs(fleet, endpoint, models_extension=False)
    try:
        for endpoint in endpoints:
            await set_knobs(fleet, endpoint, models_extension=True)
            await _reconnect(fleet, endpoint)
            await wait_for(lambda e=endpoint: _route(fleet, e, True))
            task = await run_text2img(fleet, {"lora": {"url": old_url, "sha256": old_sha}})
            assert task["endpoint"] == endpoint
            await set_knobs(fleet, endpoint, models_extension=False)
            await _reconnect(fleet, endpoint)
            await wait_for(lambda e=endpoint: _route(fleet, e, False))
    finally:
        for endpoint in endpoints:
            await set_knobs(fleet, endpoint, models_extension=True)
            await _reconnect(fleet, endpoint)
    for endpoint in endpoints:
        await wait_for(lambda e=endpoint: _route(fleet, e, True))
        await wait_for(lambda e=endpoint: _holds(fleet, e, old_sha))
        await set_knobs(fleet, endpoint, model_cache_bytes=100 * 1024)
    try:
        task = await run_text2img(fleet, {"lora": {"url": new_url, "sha256": new_sha}})
        ran_on = task["endpoint"]
        async with httpx.AsyncClient() as plain:
            held = (await plain.get(f"http://{ran_on}/comfy-fleet/models")).json()
        assert [m["sha256"] for m in held["models"]] == [new_sha]
        assert held["used_bytes"] <= 100 * 1024
        await wait_for(lambda: _holds(fleet, ran_on, new_sha))
        assert old_sha not in (await endpoint_models(fleet))[ran_on]
    finally:
        for endpoint in endpoints:
            await set_knobs(fleet, endpoint, model_cache_bytes=50 * 1024**3)


async def _holds(fleet: Fleet, endpoint: str, sha: str) -> bool:
    return sha in (await endpoint_models(fleet)).get(endpoint, [])


async def _route(fleet: Fleet, endpoint: str, value: bool) -> bool:
    for e in (await fleet.http.get("/endpoints")).json():
        if e["endpoint"] == endpoint:
            return e.get("models_route") is value and e.get("state") == "connected"
    return False


async def _reconnect(fleet: Fleet, endpoint: str) -> None:
    """Drop the endpoint's websocket: it reconnects and asks its ComfyUI about models again."""
    async with httpx.AsyncClient() as plain:
        r = await plain.post(f"http://{endpoint}/_standin/drop_websockets")
        assert r.status_code == 200, r.text
