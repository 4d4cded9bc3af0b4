"""Outputs end to end: a 10-image batch, a video output, cleanup of the ComfyUI hosts, and an S3
outage whose outputs land in the fallback folder and are completed by `python -m comfy_fleet.cli.reupload`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import httpx
import pytest

from comfy_fleet import storage
from tests.support.fleet import Fleet, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]


async def fetch(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as plain:
        return await plain.get(url)


async def test_a_batch_of_ten_stores_ten_objects(fleet: Fleet) -> None:
    r = await fleet.http.post(
        "/tasks",
        json={
            "workflow": "solid",
            "params": {"width": 8, "height": 8, "color": 0xFF0000, "batch_size": 10},
        },
    )
    assert r.status_code == 202, r.text
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    outs = final["outputs"]
    assert len(outs) == 10 and len({o["s3_key"] for o in outs}) == 10
    # Node order: the keys carry the output's index.
    assert [o["s3_key"].rsplit("/", 1)[1][:3] for o in outs] == [f"{i:03d}" for i in range(10)]
    for out in outs:
        blob = (await fetch(out["url"])).content
        assert (
            hashlib.sha256(blob).hexdigest() == out["sha256"] and out["content_type"] == "image/png"
        )


async def test_a_video_output_is_stored_with_a_video_content_type(fleet: Fleet) -> None:
    r = await fleet.http.post(
        "/tasks", json={"workflow": "solid_video", "params": {"frames": 4, "color": 0x00FF00}}
    )
    assert r.status_code == 202, r.text
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    [out] = final["outputs"]
    assert out["filename"].endswith(".webm") and out["content_type"] == "video/webm"
    resp = await fetch(out["url"])
    assert resp.headers["content-type"] == "video/webm"
    assert resp.content[:4] == b"\x1a\x45\xdf\xa3"  # the EBML magic of a WebM file
    assert (
        hashlib.sha256(resp.content).hexdigest() == out["sha256"]
        and len(resp.content) == out["size"]
    )


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def history(url: str) -> dict:
    return (await fetch(f"{url}/history")).json()


async def test_the_comfyui_hosts_are_left_clean(fleet: Fleet) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (9, 9, 9)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    ids = []
    for body in (
        {"workflow": "invert", "params": {"image": image}},
        {"workflow": "solid", "params": {"width": 8, "height": 8, "batch_size": 3}},
        {"workflow": "resize", "params": {"image": image, "width": 12}},
        {"workflow": "invert", "params": {"image": image}},
    ):
        r = await fleet.http.post("/tasks", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    finals = [await fleet.wait_final(t) for t in ids]
    assert all(f["status"] == "succeeded" for f in finals), finals

    # Cleanup runs after the end is recorded: give it a moment, then nothing may be left.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        left = {
            s.host_port: {
                "input": files_under(Path(s.input_dir)),
                "output": files_under(Path(s.output_dir)),
                "history": sorted(await history(s.url)),
            }
            for s in fleet.standins
        }
        if all(not any(v.values()) for v in left.values()) or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert all(not any(v.values()) for v in left.values()), left


def command_env(fleet: Fleet) -> dict[str, str]:
    s = fleet.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "RDB_"))}
    env.update(
        DATABASE_URL=s.database_url or "",
        S3_BUCKET=s.s3_bucket,
        S3_REGION_NAME=s.s3_region,
        S3_ENDPOINT_URL=s.s3_endpoint_url or "",
        AWS_ACCESS_KEY_ID=s.aws_access_key_id or "",
        AWS_SECRET_ACCESS_KEY=s.aws_secret_access_key or "",
        DEFAULT_FAILED_IMAGE_PATH=str(s.default_failed_image_path),
        PYTHONPATH=str(REPO),
    )
    return env


async def test_outputs_kept_during_an_s3_outage_are_completed_by_reupload(
    fleet: Fleet, receiver: Receiver, tmp_path: Path
) -> None:
    seaweed = fleet.parts.seaweed
    seaweed.stop()
    try:
        r = await fleet.http.post(
            "/tasks",
            json={
                "workflow": "solid",
                "params": {"width": 8, "height": 8, "color": 0x123456, "batch_size": 2},
                "callback_url": receiver.url,
            },
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        failed = await fleet.wait_final(task_id, timeout=45)
    finally:
        seaweed.start()
    assert failed["status"] == "failed" and failed["error"]["code"] == "storage_failed", failed
    kept = failed["error"]["details"]["outputs"]
    assert len(kept) == 2
    root = Path(fleet.settings.default_failed_image_path)
    for entry in kept:
        path = Path(entry["fallback_path"])
        assert path == root / entry["s3_key"] and path.is_file()
        assert storage.sha256_hex(path.read_bytes()) == entry["sha256"]
    first = await receiver.wait_for(task_id)
    assert first[0]["json"]["type"] == "task.failed"

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfy_fleet.cli.reupload",
        "--wait",
        "20",
        cwd=tmp_path,
        env=command_env(fleet),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert f"completed {task_id}" in out.decode()

    task = (await fleet.http.get(f"/tasks/{task_id}")).json()
    assert task["status"] == "succeeded" and task["error"] is None
    assert [o["s3_key"] for o in task["outputs"]] == [e["s3_key"] for e in kept]
    for out_, entry in zip(task["outputs"], kept, strict=True):
        blob = (await fetch(out_["url"])).content
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert not (root / "tasks" / task_id).exists()
    types = [e["type"] for e in (await fleet.http.get(f"/tasks/{task_id}/events")).json()]
    assert "task.failed" in types and types.index("task.failed") < types.index(
        "task.outputs_recovered"
    )

    # The new end is delivered as a success, under a new webhook-id.
    # Delivery is at least once: a repeat carries the same webhook-id, so count ends by id.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not any(c["json"]["type"] == "task.succeeded" for c in receiver.for_task(task_id)):
        assert loop.time() < deadline, receiver.for_task(task_id)
        await asyncio.sleep(0.1)
    ends: dict[str, str] = {}
    for call in receiver.for_task(task_id):
        assert (
            ends.setdefault(call["headers"]["webhook-id"], call["json"]["type"])
            == call["json"]["type"]
        )
    assert list(ends.values()) == ["task.failed", "task.succeeded"]
    success = next(c for c in receiver.for_task(task_id) if c["json"]["type"] == "task.succeeded")
    assert (
        success["json"]["task"]["status"] == "succeeded"
        and success["json"]["task"]["outputs"][0]["url"]
    )
