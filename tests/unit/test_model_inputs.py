"""Staging models given by URL at submit (serve_app/model_inputs.py), its bookkeeping without a
network: a model the bucket holds is not fetched, and one fetch serves concurrent requests."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.workflows import manifest as manifest_module
from serve_app import model_inputs

SHA = hashlib.sha256(b"model").hexdigest()
GRAPH = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "x", "model": ["2", 0]}},
         "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "u"}}}


class Policy:
    def check_url(self, url: str) -> Any:
        if "forbidden" in url:
            raise errors.UrlForbidden(f"{url} is not allowed")
        return url


def services() -> Any:
    return SimpleNamespace(store=InMemoryBlobStore(), extra={}, url_policy=Policy())


def workflow() -> Any:
    m = manifest_module.parse_manifest(
        {"params": {"lora": {"node": "1", "field": "lora_name", "type": "model", "folder": "loras"}}},
        GRAPH, name="w", source="w.toml",
    )
    return SimpleNamespace(manifest=m, graph=GRAPH)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    async def fake_fetch(svc: Any, url: str, sha: str, key: str) -> events.TaskModelFetched:
        calls.append(url)
        await asyncio.sleep(0.01)
        await svc.store.put(key, b"model", model_inputs.CONTENT_TYPE)
        return events.TaskModelFetched(sha256=sha, bytes=5, seconds=0.01)

    monkeypatch.setattr(model_inputs, "fetch_into_bucket", fake_fetch)
    return calls


async def test_one_fetch_serves_concurrent_requests_and_later_ones_find_the_bucket(
    fetches: list[str],
) -> None:
    svc, wf = services(), workflow()
    resolved = {"lora": {"url": "https://h/a.safetensors", "sha256": SHA}}
    first, second = await asyncio.gather(
        model_inputs.stage_models(svc, wf, resolved), model_inputs.stage_models(svc, wf, resolved)
    )
    assert fetches == ["https://h/a.safetensors"]
    assert [len(first.fetched), len(second.fetched)] in ([1, 0], [0, 1])
    assert first.models == second.models == [{
        "param": "lora", "sha256": SHA, "s3_key": f"models/{SHA}",
        "filename": f"fleet/{SHA}.safetensors", "folder": "loras",
    }]
    assert first.names == {"lora": f"fleet/{SHA}.safetensors"}
    assert first.labels == [f"model:{SHA}"]
    third = await model_inputs.stage_models(svc, wf, resolved)
    assert fetches == ["https://h/a.safetensors"] and third.fetched == []


async def test_a_forbidden_url_is_refused_naming_the_param(fetches: list[str]) -> None:
    with pytest.raises(errors.UrlForbidden) as caught:
        await model_inputs.stage_models(
            services(), workflow(), {"lora": {"url": "https://forbidden/x", "sha256": SHA}}
        )
    assert caught.value.details[0]["param"] == "lora" and fetches == []


async def test_models_by_name_need_no_staging(fetches: list[str]) -> None:
    staged = await model_inputs.stage_models(services(), workflow(), {"lora": "mine.safetensors"})
    assert (staged.models, staged.names, fetches) == ([], {}, [])
    # ... only an endpoint that lists the file (routing: its `file:` label)
    assert staged.files == [{"param": "lora", "folder": "loras", "filename": "mine.safetensors"}]
    assert staged.labels == ["file:loras/mine.safetensors"]
