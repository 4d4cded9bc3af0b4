"""A batch's items are anything POST /tasks takes (docs/api.md, "Batches and sweeps"), through
real Ray Serve HTTP, PostgreSQL, SeaweedFS and stand-ins: tasks pinned to an old workflow
version run it (in a list and in a sweep), raw graph items run (one with an image file), models
given by URL are fetched once and run, and a bad item (a graph with an unknown class, an unknown
version, a model whose checksum does not match) refuses the batch naming it, nothing recorded."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image

from comfy_fleet.storage.s3 import S3BlobStore
from tests.e2e.test_batches import wait_completed
from tests.e2e.test_models import fetched_events
from tests.support.file_server import FileServer
from tests.e2e.test_models import bucket, model_server  # noqa: F401  (fixtures)
from tests.e2e.test_raw_graphs import SOLID, ready, stored_pixels
from tests.e2e.test_versions import NAME, prefix_of, reload, set_prefix
from tests.e2e.test_versions import versioned  # noqa: F401  (fixture)
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

PHOTO = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}},
}


@pytest.fixture
async def db(fleet: Fleet) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fleet.settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def recorded(db: asyncpg.Connection) -> tuple[int, int, int]:
    """Rows of tasks, their events and batches: what a refused batch must leave as it was."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM tasks) AS t, (SELECT count(*) FROM task_events) AS e, "
        "(SELECT count(*) FROM batches) AS b"
    )
    return row["t"], row["e"], row["b"]


async def run_batch(fleet: Fleet, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit the batch, wait for its end; its tasks as they ended, in the batch's order."""
    r = await fleet.http.post("/batches", json=body)
    assert r.status_code == 202, r.text
    await wait_completed(fleet, r.json()["batch_id"])
    return [(await fleet.http.get(f"/tasks/{t}")).json() for t in r.json()["task_ids"]]


async def refused(fleet: Fleet, body: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    r = await fleet.http.post("/batches", json=body)
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, error
    return error


def png_base64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 20, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def test_tasks_pinned_to_an_old_version_run_it(
    fleet: Fleet, versioned: Path, db: asyncpg.Connection  # noqa: F811
) -> None:
    old = (await fleet.http.get(f"/workflows/{NAME}")).json()["version"]
    # a first batch runs (and so stores) the current files' version
    [first] = await run_batch(fleet, {"tasks": [{"workflow": NAME}]})
    assert (first["workflow_version"], prefix_of(first)) == (old, "old")
    set_prefix(versioned, "new")
    assert (await reload(fleet))["changed"] == [NAME]
    new = (await fleet.http.get(f"/workflows/{NAME}")).json()["version"]
    assert new != old
    listed = await run_batch(fleet, {"tasks": [
        {"workflow": NAME, "workflow_version": old}, {"workflow": NAME},
        {"workflow": NAME, "workflow_version": new},
    ]})
    assert [t["status"] for t in listed] == ["succeeded"] * 3, listed
    assert [(t["workflow_version"], prefix_of(t)) for t in listed] == [
        (old, "old"), (new, "new"), (new, "new"),
    ]
    swept = await run_batch(fleet, {
        "workflow": NAME, "workflow_version": old, "sweep": {"width": [3, 5]},
    })
    assert [(t["status"], t["workflow_version"], prefix_of(t)) for t in swept] == [
        ("succeeded", old, "old"),
    ] * 2
    # a version the service does not hold: 409 naming the task, nothing recorded
    before = await recorded(db)
    error = await refused(fleet, {"tasks": [
        {"workflow": NAME, "client_task_id": f"pin-{uuid.uuid4()}"},
        {"workflow": NAME, "workflow_version": "0" * 16},
    ]}, 409, "workflow_version_unknown")
    assert error["details"]["index"] == 1 and error["message"].startswith("tasks[1]: ")
    error = await refused(fleet, {
        "workflow": NAME, "workflow_version": "0" * 16, "sweep": {"width": [3, 5]},
    }, 409, "workflow_version_unknown")
    assert error["details"]["index"] == 0
    assert await recorded(db) == before


async def test_raw_graph_items_run(fleet: Fleet, bucket: S3BlobStore) -> None:  # noqa: F811
    await ready(fleet)
    tasks = await run_batch(fleet, {"tasks": [
        {"graph": SOLID},
        {"graph": PHOTO, "files": {"photo.png": png_base64()}},
        {"workflow": "solid", "params": {"width": 4, "height": 4}},
    ]})
    assert [(t["workflow"], t["status"]) for t in tasks] == [
        ("graph", "succeeded"), ("graph", "succeeded"), ("solid", "succeeded"),
    ], tasks
    solid = await stored_pixels(tasks[0])
    assert solid.shape == (16, 24, 3) and solid[0, 0].tolist() == [255, 0, 255]
    photo = await stored_pixels(tasks[1])
    assert photo.shape == (3, 5, 3) and photo[1, 1].tolist() == [245, 235, 225]
    # the image file is kept in S3 as received, as a single task's is
    [kept] = tasks[1]["inputs"]
    assert kept["param"] == "photo.png" and f"/{tasks[1]['task_id']}/" in kept["s3_key"]
    assert await bucket.get(kept["s3_key"]) == base64.b64decode(png_base64())


async def test_a_bad_graph_item_refuses_the_batch_naming_it_and_its_node(
    fleet: Fleet, db: asyncpg.Connection
) -> None:
    await ready(fleet)
    before = await recorded(db)
    ctids = [f"bad-graph-batch-{uuid.uuid4()}" for _ in range(3)]
    error = await refused(fleet, {"tasks": [
        {"workflow": "solid", "client_task_id": ctids[0]},
        {"graph": PHOTO, "files": {"photo.png": png_base64()}, "client_task_id": ctids[1]},
        {"graph": {**SOLID, "4": {"class_type": "NopeNode", "inputs": {}}},
         "client_task_id": ctids[2]},
    ]}, 422, "graph_invalid")
    details = error["details"]
    assert (details["index"], details["node_id"], details["problem"]) == (2, "4", "class_unknown")
    assert await recorded(db) == before
    for ctid in ctids:
        listed = (await fleet.http.get("/tasks", params={"client_task_id": ctid})).json()
        assert listed["tasks"] == []


async def test_models_by_url_in_a_batch_are_fetched_once_and_run(
    fleet: Fleet, model_server: FileServer, bucket: S3BlobStore,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    url, sha = model_server.add("batch-style.safetensors")
    lora = {"url": url, "sha256": sha}
    tasks = await run_batch(fleet, {"tasks": [
        {"workflow": "text2img", "params": {"text": "a cat", "lora": lora}},
        {"workflow": "text2img", "params": {"text": "a dog", "lora": lora,
                                             "lora_strength": 0.5}},
    ]})
    assert [t["status"] for t in tasks] == ["succeeded"] * 2, tasks
    for t in tasks:
        assert t["models"] == [{
            "param": "lora", "sha256": sha, "s3_key": f"models/{sha}",
            "filename": f"fleet/{sha}.safetensors",
        }]
    wheres = [[e["where"] for e in await fetched_events(fleet, t["task_id"])] for t in tasks]
    # fetched into the bucket once, before the answer, recorded with the first task
    assert wheres[0].count("bucket") == 1 and "bucket" not in wheres[1], wheres
    assert model_server.hits == ["batch-style.safetensors"]
    assert await bucket.get(f"models/{sha}") == model_server.files["batch-style.safetensors"]

    liar_url, liar_sha = model_server.add("batch-liar.safetensors")
    claimed = hashlib.sha256(b"not the liar").hexdigest()
    before = await recorded(db)
    error = await refused(fleet, {"tasks": [
        {"workflow": "invert", "params": {"image": png_base64()}},
        {"workflow": "text2img",
         "params": {"text": "a", "lora": {"url": liar_url, "sha256": claimed}}},
    ]}, 422, "model_checksum_mismatch")
    assert error["details"]["index"] == 1
    assert error["details"]["problems"][0]["param"] == "lora"
    assert error["details"]["problems"][0]["actual"] == liar_sha
    assert await recorded(db) == before
    assert not await bucket.exists(f"models/{claimed}")
    assert not await bucket.exists(f"models/{liar_sha}")


async def test_a_graph_items_bad_file_is_named_as_for_a_single_task(
    fleet: Fleet, db: asyncpg.Connection
) -> None:
    await ready(fleet)
    before = await recorded(db)
    not_an_image = base64.b64encode(b"x" * 64).decode()
    error = await refused(fleet, {"tasks": [
        {"workflow": "invert", "params": {"image": png_base64()}},
        {"graph": PHOTO, "files": {"photo.png": not_an_image}},
    ]}, 422, "input_rejected")
    assert error["details"]["index"] == 1
    assert error["message"].startswith("tasks[1]: files.photo.png: ")
    assert await recorded(db) == before
