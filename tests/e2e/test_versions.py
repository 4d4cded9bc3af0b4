"""Workflow versions and reruns through the whole service (docs/api.md §7.3): a workflow edited
and reloaded between a task's submit and its dispatch runs the version the task was accepted
with; a pinned version runs; reruns reuse the kept image input after the client's copy is gone,
draw seeds afresh or keep them, and always make and store fresh outputs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_inputs import inverted_as_comfyui, output_pixels, png_bytes, sample_image
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: a workflow of this module's own, so editing it disturbs no other test
NAME = "versioned"


async def knobs(fleet: Fleet, **values: Any) -> None:
    async with httpx.AsyncClient() as c:
        for s in fleet.standins:
            assert (await c.post(f"{s.url}/_standin/knobs", json=values)).status_code == 200


async def files_written(fleet: Fleet) -> int:
    async with httpx.AsyncClient() as c:
        counts = [(await c.get(f"{s.url}/_standin/counters")).json() for s in fleet.standins]
    return sum(int(n["files_written"]) for n in counts)


async def reload(fleet: Fleet) -> dict[str, Any]:
    r = await fleet.http.post("/workflows/reload")
    assert r.status_code == 200, r.text
    return dict(r.json())


def set_prefix(folder: Path, prefix: str) -> None:
    graph = (Path(__file__).resolve().parents[2] / "workflows" / "solid.json").read_text()
    (folder / f"{NAME}.json").write_text(graph.replace('"filename_prefix": "solid"',
                                                      f'"filename_prefix": "{prefix}"'))


@pytest.fixture
async def versioned(fleet: Fleet) -> AsyncIterator[Path]:
    """The `solid` workflow as `versioned` (prefix "old"), removed again afterwards."""
    folder = Path(fleet.settings.workflows_dir)
    shutil.copy(folder / "solid.toml", folder / f"{NAME}.toml")
    set_prefix(folder, "old")
    assert NAME in (await reload(fleet))["added"]
    try:
        yield folder
    finally:
        for suffix in (".json", ".toml"):
            (folder / f"{NAME}{suffix}").unlink(missing_ok=True)
        await reload(fleet)


async def submit(fleet: Fleet, body: dict[str, Any]) -> dict[str, Any]:
    r = await fleet.http.post("/tasks", json=body)
    assert r.status_code == 202, r.text
    return dict(r.json())


def prefix_of(task: dict[str, Any]) -> str:
    (out,) = task["outputs"]
    return str(out["filename"]).split("_", 1)[0]


async def test_an_edit_reloaded_between_submit_and_dispatch_runs_the_old_version(
    fleet: Fleet, versioned: Path
) -> None:
    old = (await fleet.http.get(f"/workflows/{NAME}")).json()["version"]
    await knobs(fleet, stall_worker=True)
    try:
        # Fill every endpoint's queue, so the task below waits in the router, undispatched.
        depth = fleet.settings.endpoint_queue_depth * len(fleet.standins)
        fillers = [await submit(fleet, {"workflow": "solid", "params": {"width": 4, "height": 4}})
                   for _ in range(depth)]
        for _ in range(200):
            states = [(await fleet.http.get(f"/tasks/{t['task_id']}")).json()["status"]
                      for t in fillers]
            if all(s == "dispatched" for s in states):
                break
            await asyncio.sleep(0.05)
        task = await submit(fleet, {"workflow": NAME, "params": {"width": 8, "height": 8}})
        assert task["workflow_version"] == old
        set_prefix(versioned, "new")
        assert (await reload(fleet))["changed"] == [NAME]
        await asyncio.sleep(0.3)
        assert (await fleet.http.get(f"/tasks/{task['task_id']}")).json()["status"] == "queued"
    finally:
        await knobs(fleet, stall_worker=False)
    final = await fleet.wait_final(task["task_id"])
    assert final["status"] == "succeeded", final
    assert final["workflow_version"] == old and prefix_of(final) == "old"
    # A task submitted now runs the new files; one pinned to the old version, the old.
    new = (await fleet.http.get(f"/workflows/{NAME}")).json()["version"]
    assert new != old
    now = await fleet.wait_final((await submit(fleet, {"workflow": NAME}))["task_id"])
    pinned = await fleet.wait_final(
        (await submit(fleet, {"workflow": NAME, "workflow_version": old}))["task_id"])
    assert (now["workflow_version"], prefix_of(now)) == (new, "new")
    assert (pinned["workflow_version"], prefix_of(pinned)) == (old, "old")
    listed = (await fleet.http.get(f"/workflows/{NAME}/versions")).json()
    assert [(v["version"], v["current"]) for v in listed] == [(old, False), (new, True)]
    assert all(v["created_at"] for v in listed)
    for f in fillers:
        assert (await fleet.wait_final(f["task_id"]))["status"] == "succeeded"


async def test_an_unknown_version_is_refused(fleet: Fleet) -> None:
    r = await fleet.http.post("/tasks", json={"workflow": "solid", "workflow_version": "0" * 16})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "workflow_version_unknown"


async def test_a_rerun_of_an_image_task_uses_the_kept_input(fleet: Fleet, tmp_path: Path) -> None:
    img = sample_image()
    sent = tmp_path / "mine.png"
    sent.write_bytes(png_bytes(img))
    digest = hashlib.sha256(sent.read_bytes()).hexdigest()
    first = await fleet.wait_final((await submit(fleet, {
        "workflow": "invert", "params": {"image": base64.b64encode(sent.read_bytes()).decode()},
    }))["task_id"])
    assert first["status"] == "succeeded", first
    sent.unlink()  # the client's copy is gone
    r = await fleet.http.post(f"/tasks/{first['task_id']}/rerun")
    assert r.status_code == 202, r.text
    again = await fleet.wait_final(r.json()["task_id"])
    assert again["status"] == "succeeded", again
    assert again["rerun_of"] == first["task_id"]
    assert again["workflow_version"] == first["workflow_version"]
    assert [i["sha256"] for i in again["inputs"]] == [digest] == [
        i["sha256"] for i in first["inputs"]]
    async with httpx.AsyncClient() as plain:
        kept = (await plain.get(again["inputs"][0]["url"])).content
    assert hashlib.sha256(kept).hexdigest() == digest
    assert np.array_equal(await output_pixels(again), inverted_as_comfyui(img))
    # fresh outputs: another object (its PNG names the rerun's own prompt), the same pixels
    (a,), (b,) = first["outputs"], again["outputs"]
    assert a["s3_key"] != b["s3_key"] and a["sha256"] != b["sha256"]


async def test_a_rerun_makes_and_stores_fresh_outputs(fleet: Fleet) -> None:
    body = {"workflow": "solid", "params": {"width": 8, "height": 8, "color": 4242}}
    first = await fleet.wait_final((await submit(fleet, body))["task_id"])
    written = await files_written(fleet)
    r = await fleet.http.post(f"/tasks/{first['task_id']}/rerun", json={})
    again = await fleet.wait_final(r.json()["task_id"])
    assert again["status"] == "succeeded", again
    # ComfyUI would serve an identical prompt from its cache without writing a file: the
    # rerun's save node has a prefix of its own, so it ran and wrote anew.
    assert await files_written(fleet) == written + 1
    (a,), (b,) = first["outputs"], again["outputs"]
    assert a["s3_key"] != b["s3_key"] and a["sha256"] != b["sha256"]
    async with httpx.AsyncClient() as plain:
        pixels = []
        for out in (a, b):
            blob = (await plain.get(out["url"])).content
            assert hashlib.sha256(blob).hexdigest() == out["sha256"]
            pixels.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    assert pixels[0].shape == (8, 8, 3) and np.array_equal(pixels[0], pixels[1])


async def _submitted(fleet: Fleet, task_id: str) -> dict[str, Any]:
    return dict((await fleet.http.get(f"/tasks/{task_id}/events")).json()[0]["data"])


async def test_rerun_overrides_and_seeds(fleet: Fleet) -> None:
    image = base64.b64encode(png_bytes(sample_image())).decode()
    first = await submit(fleet, {"workflow": "img2img", "params": {"image": image, "text": "a"}})
    original = await _submitted(fleet, first["task_id"])
    assert original["seeds_drawn"] == ["seed"]
    fresh = (await fleet.http.post(f"/tasks/{first['task_id']}/rerun",
                                   json={"params": {"text": "b"}})).json()
    same = (await fleet.http.post(f"/tasks/{first['task_id']}/rerun",
                                  json={"same_seed": True, "priority": 3})).json()
    pinned = (await fleet.http.post(f"/tasks/{first['task_id']}/rerun",
                                    json={"params": {"seed": 77}})).json()
    got = {k: await _submitted(fleet, t["task_id"])
           for k, t in (("fresh", fresh), ("same", same), ("pinned", pinned))}
    assert got["fresh"]["params"]["text"] == "b"
    assert got["fresh"]["params"]["seed"] != original["params"]["seed"]
    assert got["fresh"]["seeds_drawn"] == ["seed"]
    assert got["same"]["params"] == original["params"] and same["priority"] == 3
    assert got["same"]["seeds_drawn"] == ["seed"]
    assert got["pinned"]["params"]["seed"] == 77 and got["pinned"]["seeds_drawn"] == []
    for t in (first, fresh, same, pinned):
        final = await fleet.wait_final(t["task_id"])
        assert final["status"] == "succeeded", final
        assert final["inputs"][0]["sha256"] == first["inputs"][0]["sha256"]


async def test_a_raw_graph_task_is_not_rerun(fleet: Fleet) -> None:
    from tests.e2e.test_raw_graphs import SOLID, ready

    await ready(fleet)
    r = await fleet.http.post("/tasks", json={"graph": SOLID})
    assert r.status_code == 202, r.text
    again = await fleet.http.post(f"/tasks/{r.json()['task_id']}/rerun")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "workflow_version_unknown"
    assert "raw graph" in again.json()["error"]["message"]
    await fleet.wait_final(r.json()["task_id"])
