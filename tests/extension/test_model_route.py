"""The extension's model routes, loaded as ComfyUI loads custom nodes (ComfyUI's ``server`` and
``folder_paths`` faked, see fake_comfy.py), pulling from a bucket served over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fake_bucket import Bucket, serve_bucket
from fake_comfy import MODULE_NAME, FakeComfy, load_extension, unload_extension

#: the paths of the pull requests the app received, in order
PULLS = web.AppKey("pulls", asyncio.Queue)


@pytest.fixture
async def bucket() -> AsyncIterator[Bucket]:
    async with serve_bucket() as b:
        yield b


@pytest.fixture
async def client(comfy: FakeComfy, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[TestClient]:
    monkeypatch.setenv("COMFY_FLEET_MODEL_BUCKET_URL", bucket.url)
    monkeypatch.delenv("COMFY_FLEET_MODEL_CACHE_BYTES", raising=False)
    _, app = load_extension(comfy)
    pulls = app[PULLS] = asyncio.Queue()

    @web.middleware
    async def note_pulls(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/pull"):
            pulls.put_nowait(request.path)
        return await handler(request)

    app.middlewares.append(note_pulls)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c
    unload_extension()


async def _pull(client: TestClient, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/comfy-fleet/models/pull", json=body)
    return resp.status, await resp.json()


def _body(bucket: Bucket, data: bytes, folder: str = "loras", filename: str | None = None,
          **extra: Any) -> dict[str, Any]:
    sha = bucket.put(data)
    return {"url": bucket.presigned(f"models/{sha}"), "sha256": sha, "folder": folder,
            "filename": f"fleet/{sha[:12]}.safetensors" if filename is None else filename, **extra}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def _listed(client: TestClient) -> list[dict[str, Any]]:
    resp = await client.get("/comfy-fleet/models")
    assert resp.status == 200
    return (await resp.json())["models"]


async def test_info_says_the_route_is_there_and_configured(client, bucket) -> None:
    resp = await client.get("/comfy-fleet/models/info")
    assert resp.status == 200
    info = await resp.json()
    assert info["version"] == 1 and info["configured"] is True
    assert info["bucket_url"] == bucket.url
    assert info["cache_bytes"] == 50 * 1024**3 and info["used_bytes"] == 0
    assert await _listed(client) == []


async def test_a_pull_is_verified_placed_listed_and_shown_to_the_loaders(client, bucket, comfy) -> None:
    data = os.urandom(3000)
    body = _body(bucket, data)
    comfy.folder_paths.filename_list_cache["loras"] = ([], {}, 0.0)  # what a loader listed before
    status, answer = await _pull(client, body)
    assert status == 200, answer
    assert answer["fetched"] is True and answer["size"] == 3000 and answer["evicted"] == []
    assert (answer["sha256"], answer["folder"], answer["filename"]) == (
        body["sha256"], "loras", body["filename"])
    assert (comfy.folder("loras") / body["filename"]).read_bytes() == data
    assert _files(comfy.folder("loras")) == [body["filename"]]  # no .part left behind
    # ComfyUI's cached file list of the folder is dropped, so /object_info lists the new file.
    assert "loras" not in comfy.folder_paths.filename_list_cache
    [listed] = await _listed(client)
    assert listed["sha256"] == body["sha256"] and listed["size"] == 3000
    assert listed["folder"] == "loras" and listed["filename"] == body["filename"]
    index = json.loads((comfy.models_dir / ".comfy-fleet-models.json").read_text())
    assert [m["sha256"] for m in index["models"]] == [body["sha256"]]


async def test_a_second_pull_finds_the_model_in_place_and_fetches_nothing(client, bucket) -> None:
    body = _body(bucket, b"m" * 100)
    first = await _pull(client, body)
    second = await _pull(client, body)
    assert first[0] == second[0] == 200
    assert first[1]["fetched"] is True and second[1]["fetched"] is False
    assert second[1]["last_used"] >= first[1]["last_used"]
    assert second[1]["last_used"] == (await _listed(client))[0]["last_used"]
    assert bucket.requests[f"models/{body['sha256']}"] == 1


async def test_a_legacy_folder_name_writes_to_the_first_path_of_its_folder(client, bucket, comfy) -> None:
    shutil.rmtree(comfy.models_dir / "unet")  # ComfyUI lists a missing folder as empty
    body = _body(bucket, b"u" * 10, folder="unet", filename="flux-test.safetensors")
    status, answer = await _pull(client, body)
    assert status == 200 and answer["folder"] == "diffusion_models"
    assert (comfy.models_dir / "unet" / "flux-test.safetensors").read_bytes() == b"u" * 10


async def test_a_checksum_mismatch_leaves_nothing_under_the_name(client, bucket, comfy) -> None:
    body = _body(bucket, b"the real bytes")
    bucket.objects[f"models/{body['sha256']}"] = b"other bytes"
    status, answer = await _pull(client, body)
    assert status == 422
    assert answer["error"]["code"] == "model_checksum_mismatch"
    assert answer["error"]["details"]["expected"] == body["sha256"]
    assert answer["error"]["details"]["actual"] == hashlib.sha256(b"other bytes").hexdigest()
    assert _files(comfy.folder("loras")) == []
    assert await _listed(client) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/bucket/models/{sha}",  # another host name
        "http://127.0.0.1:{other}/bucket/models/{sha}",  # another port
        "https://127.0.0.1:{port}/bucket/models/{sha}",  # another scheme
        "http://127.0.0.1:{port}/other/models/{sha}",  # another bucket
        "http://127.0.0.1:{port}/bucketx/models/{sha}",  # a bucket whose name starts alike
        "http://127.0.0.1:{port}/bucket/../other/{sha}",
        "http://127.0.0.1:{port}/bucket/%2e%2e/other/{sha}",
        "http://127.0.0.1:{port}/bucket/models%2F{sha}",
        "http://127.0.0.1:{port}/bucket/models\\{sha}",
        "http://user:pw@127.0.0.1:{port}/bucket/models/{sha}",
        "http://127.0.0.1:{port}/bucket/models/{sha}#x",
        "http://127.0.0.1:{port}/bucket/",
        "http://127.0.0.1:{port}/bucket",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/bucket/models/{sha}",
        "http://127.0.0.1:{port}/bucket/models/{sha} x",
    ],
)
async def test_a_url_outside_the_bucket_is_refused_unrequested(url: str, client, bucket, comfy) -> None:
    body = _body(bucket, b"x" * 10)
    body["url"] = url.format(port=bucket.server.port, other=bucket.server.port + 1, sha=body["sha256"])
    status, answer = await _pull(client, body)
    assert status == 403 and answer["error"]["code"] == "url_forbidden", answer
    assert sum(bucket.requests.values()) == 0
    assert _files(comfy.folder("loras")) == []


async def test_a_redirect_is_refused(client, bucket, comfy) -> None:
    body = _body(bucket, b"x" * 10)
    body["url"] = bucket.presigned("redirect")
    status, answer = await _pull(client, body)
    assert status == 403 and answer["error"]["code"] == "url_forbidden"
    assert answer["error"]["details"]["status"] == 302
    assert bucket.requests == {"redirect": 1}  # the target was never requested
    assert _files(comfy.folder("loras")) == []


async def test_a_missing_object_fails_the_fetch(client, bucket) -> None:
    body = _body(bucket, b"x" * 10)
    body["url"] = bucket.presigned("models/" + "0" * 64)
    status, answer = await _pull(client, body)
    assert status == 502 and answer["error"]["code"] == "model_fetch_failed"
    assert answer["error"]["details"] == {"status": 404}


@pytest.mark.parametrize(
    ("folder", "filename", "code"),
    [
        ("loras", "../x.safetensors", "invalid_filename"),
        ("loras", "../../input/x.safetensors", "invalid_filename"),
        ("loras", "fleet/../../x.safetensors", "invalid_filename"),
        ("loras", "fleet\\..\\..\\x.safetensors", "invalid_filename"),
        ("loras", "/etc/x.safetensors", "invalid_filename"),
        ("loras", "C:\\x.safetensors", "invalid_filename"),
        ("loras", "a\nb.safetensors", "invalid_filename"),
        ("loras", ".hidden.safetensors", "invalid_filename"),
        ("loras", "fleet/.comfy-fleet-models.json", "invalid_filename"),
        ("loras", "x.py", "invalid_filename"),  # ComfyUI lists no .py files in loras
        ("loras", "", "invalid_filename"),
        ("loras", "linkdir/x.safetensors", "invalid_filename"),  # a subfolder linked outside
        ("loras", "escape.safetensors", "invalid_filename"),  # a file linked outside
        ("diffusers", "x.safetensors", "invalid_filename"),  # holds folders, not files
        ("custom_nodes", "x.safetensors", "invalid_folder"),
        ("input", "x.safetensors", "invalid_folder"),
        ("../models/loras", "x.safetensors", "invalid_folder"),
        ("nope", "x.safetensors", "invalid_folder"),
        ("", "x.safetensors", "invalid_folder"),
    ],
)
async def test_names_and_folders_that_leave_the_model_folders_are_refused(
    folder: str, filename: str, code: str, client, bucket, comfy, tmp_path: Path
) -> None:
    loras = comfy.folder("loras")
    (loras / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (loras / "escape.safetensors").symlink_to(tmp_path / "outside" / "secret.txt")
    body = _body(bucket, b"x" * 10, folder=folder, filename=filename)
    status, answer = await _pull(client, body)
    assert status == 400 and answer["error"]["code"] == code, answer
    assert answer["error"]["message"]
    assert sum(bucket.requests.values()) == 0
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.txt"]
    assert (tmp_path / "outside" / "secret.txt").read_text() == "keep me"
    assert not list(comfy.root.rglob("x.*"))


@pytest.mark.parametrize(
    "change",
    [
        {"sha256": "ABC"},
        {"sha256": "A" * 64},
        {"sha256": None},
        {"in_use": "0" * 64},
        {"in_use": ["nope"]},
        {"url": 7},
        {"extra": 1},
        {"cache_bytes": 0},
        {"cache_bytes": "1000"},
        {"cache_bytes": True},
    ],
)
async def test_bad_bodies_are_refused(change: dict[str, Any], client, bucket) -> None:
    body = {**_body(bucket, b"x"), **change}
    status, answer = await _pull(client, body)
    assert status == 400 and answer["error"]["code"] == "bad_request", answer
    resp = await client.post("/comfy-fleet/models/pull", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_request"
    assert sum(bucket.requests.values()) == 0


async def test_a_file_that_is_not_ours_is_never_replaced(client, bucket, comfy) -> None:
    (comfy.folder("loras") / "mine.safetensors").write_bytes(b"the operator's")
    status, answer = await _pull(client, _body(bucket, b"x" * 10, filename="mine.safetensors"))
    assert status == 409 and answer["error"]["code"] == "name_taken"
    assert (comfy.folder("loras") / "mine.safetensors").read_bytes() == b"the operator's"
    assert sum(bucket.requests.values()) == 0


async def test_a_subfolder_swapped_for_a_symlink_after_the_check_does_not_escape(
    client, bucket, comfy, tmp_path: Path, monkeypatch
) -> None:
    """The race, won deterministically: the name is checked while its folders are real, then
    a folder on its path becomes a symlink to a folder outside before the file is written."""
    paths_module = sys.modules[MODULE_NAME + ".paths"]
    check = paths_module.resolve_inside
    fleet = comfy.folder("loras") / "fleet"
    fleet.mkdir()

    def check_then_swap(base: Path, subfolder: str, filename: str) -> Path:
        target = check(base, subfolder, filename)
        shutil.rmtree(fleet)
        fleet.symlink_to(tmp_path / "outside", target_is_directory=True)
        return target

    monkeypatch.setattr(paths_module, "resolve_inside", check_then_swap)
    status, answer = await _pull(client, _body(bucket, b"x" * 10))
    assert status == 400 and answer["error"]["code"] == "invalid_filename"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.txt"]


async def test_without_a_bucket_pulls_are_refused(client, bucket, monkeypatch) -> None:
    monkeypatch.delenv("COMFY_FLEET_MODEL_BUCKET_URL")
    status, answer = await _pull(client, _body(bucket, b"x"))
    assert status == 503 and answer["error"]["code"] == "not_configured"
    info = await (await client.get("/comfy-fleet/models/info")).json()
    assert info["configured"] is False and "COMFY_FLEET_MODEL_BUCKET_URL" in info["problem"]


async def test_eviction_under_a_small_budget_is_lru_and_never_a_model_in_use(
    client, bucket, comfy, monkeypatch
) -> None:
    monkeypatch.setenv("COMFY_FLEET_MODEL_CACHE_BYTES", "3000")
    a, b, c, d, e = (_body(bucket, bytes([i]) * 1000) for i in range(5))
    for body in (a, b, c):
        assert (await _pull(client, body))[1]["fetched"] is True
    assert (await _pull(client, a))[1]["fetched"] is False  # used again: b is now the oldest
    status, answer = await _pull(client, d)
    assert status == 200 and [m["sha256"] for m in answer["evicted"]] == [b["sha256"]]
    loras = comfy.folder("loras")
    assert not (loras / b["filename"]).exists()
    # c is the oldest now, but a queued prompt loads it; the caller says a is in use: d goes.
    comfy.queue.add({"1": {"class_type": "LoraLoader",
                           "inputs": {"lora_name": c["filename"], "strength_model": 1.0}}})
    status, answer = await _pull(client, {**e, "in_use": [a["sha256"]]})
    assert status == 200 and [m["sha256"] for m in answer["evicted"]] == [d["sha256"]]
    assert {m["sha256"] for m in await _listed(client)} == {a["sha256"], c["sha256"], e["sha256"]}
    # Everything left is in use: no room, and nothing is deleted for the refusal.
    comfy.queue.add({"2": {"class_type": "LoraLoader", "inputs": {"lora_name": e["filename"]}}},
                    running=True)
    status, answer = await _pull(client, {**_body(bucket, b"f" * 1000), "in_use": [a["sha256"]]})
    assert status == 507 and answer["error"]["code"] == "model_cache_full"
    assert answer["error"]["details"]["in_use_bytes"] == 3000
    assert {m["sha256"] for m in await _listed(client)} == {a["sha256"], c["sha256"], e["sha256"]}
    assert all((loras / m["filename"]).exists() for m in (a, c, e))


async def test_an_operators_own_models_are_never_evicted(client, bucket, comfy, monkeypatch) -> None:
    monkeypatch.setenv("COMFY_FLEET_MODEL_CACHE_BYTES", "1500")
    (comfy.folder("loras") / "own.safetensors").write_bytes(b"o" * 5000)
    first, second = _body(bucket, b"1" * 1000), _body(bucket, b"2" * 1000)
    assert (await _pull(client, first))[0] == 200
    status, answer = await _pull(client, second)
    assert status == 200 and [m["sha256"] for m in answer["evicted"]] == [first["sha256"]]
    assert (comfy.folder("loras") / "own.safetensors").read_bytes() == b"o" * 5000


async def test_the_smaller_of_the_callers_and_the_hosts_budget_holds(client, bucket, monkeypatch) -> None:
    monkeypatch.setenv("COMFY_FLEET_MODEL_CACHE_BYTES", "2500")
    first, second, third = (_body(bucket, bytes([i]) * 1000, cache_bytes=10_000) for i in range(3))
    assert [(await _pull(client, b))[1]["evicted"] for b in (first, second)] == [[], []]
    status, answer = await _pull(client, third)  # the host's 2500 caps the caller's 10000
    assert status == 200 and [m["sha256"] for m in answer["evicted"]] == [first["sha256"]]
    status, answer = await _pull(client, {**_body(bucket, b"4" * 1000), "cache_bytes": 1000})
    assert status == 200 and len(answer["evicted"]) == 2


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_model_larger_than_the_budget_is_refused(chunked: bool, client, bucket, comfy,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("COMFY_FLEET_MODEL_CACHE_BYTES", "1000")
    kept = _body(bucket, b"k" * 600)
    assert (await _pull(client, kept))[0] == 200
    body = _body(bucket, b"x" * 5000)
    if chunked:  # no Content-Length: refused once more than the budget arrived
        body["url"] += "&chunked=1"
    status, answer = await _pull(client, body)
    assert status == 507 and answer["error"]["code"] == "model_too_large"
    assert _files(comfy.folder("loras")) == [kept["filename"]]


async def test_a_chunked_answer_makes_room_once_its_size_is_known(client, bucket, comfy,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("COMFY_FLEET_MODEL_CACHE_BYTES", "2000")
    old = _body(bucket, b"o" * 1500)
    assert (await _pull(client, old))[0] == 200
    new = _body(bucket, b"n" * 1500)
    new["url"] += "&chunked=1"
    status, answer = await _pull(client, new)
    assert status == 200 and [m["sha256"] for m in answer["evicted"]] == [old["sha256"]]
    assert _files(comfy.folder("loras")) == [new["filename"]]


async def test_concurrent_pulls_of_one_model_fetch_it_once(client, bucket, comfy) -> None:
    body = _body(bucket, os.urandom(50_000))
    bucket.gate = asyncio.Event()  # the first fetch is held until both pulls arrived
    first = asyncio.ensure_future(_pull(client, body))
    second = asyncio.ensure_future(_pull(client, body))
    pulls = client.app[PULLS]
    await pulls.get()
    await pulls.get()
    await bucket.requested.wait()
    bucket.gate.set()
    answers = await asyncio.gather(first, second)
    assert [status for status, _ in answers] == [200, 200]
    assert sorted(a["fetched"] for _, a in answers) == [False, True]
    assert bucket.requests[f"models/{body['sha256']}"] == 1
    assert _files(comfy.folder("loras")) == [body["filename"]]
    assert len(await _listed(client)) == 1

