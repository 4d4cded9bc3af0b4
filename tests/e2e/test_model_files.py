"""Models given by file name end to end (docs/api.md §7.5) through the shipped `text2img`'s
optional LoRA: a task naming a file only one endpoint's ComfyUI holds runs there; a task naming a
file no endpoint holds waits, queued, and runs once an endpoint holding it joins the fleet."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_fleet_devstack.launch import STANDIN_MODELS
from comfy_standin.testing import StandInProcess
from tests.support.fleet import Fleet
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


async def submit(fleet: Fleet, lora: str) -> str:
    r = await fleet.http.post(
        "/tasks", json={"workflow": "text2img", "params": {"text": "a fox", "lora": lora}}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def endpoints(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {e["endpoint"]: e for e in (await fleet.http.get("/endpoints")).json()}


async def loras_of(fleet: Fleet, endpoint: str) -> list[int]:
    """[how many LoRA files the connected endpoint lists], or [] while that is not known."""
    e = (await endpoints(fleet)).get(endpoint) or {}
    count = (e.get("model_files") or {}).get("loras")
    return [count] if e.get("state") == "connected" and count is not None else []


async def lists_loras(fleet: Fleet, endpoint: str, count: int) -> bool:
    return await loras_of(fleet, endpoint) == [count]


async def reconnect(endpoint: str) -> None:
    """Cut the stand-in's websockets: its endpoint reconnects and reads /object_info again."""
    async with httpx.AsyncClient() as plain:
        r = await plain.post(f"http://{endpoint}/_standin/drop_websockets")
        assert r.status_code == 200, r.text


def copy_lora(models_dir: Path, name: str) -> Path:
    """Put a LoRA file on a stand-in's host, as an operator copies one onto a ComfyUI's."""
    path = models_dir / "loras" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"lora weights")
    return path


async def test_a_model_file_runs_where_it_is_and_waits_while_no_endpoint_holds_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    b = fleet.standins[1]
    only_b = f"only-b-{uuid.uuid4().hex[:8]}.safetensors"
    nowhere = f"nowhere-{uuid.uuid4().hex[:8]}.safetensors"
    (before,) = await eventually(lambda: loras_of(fleet, b.host_port), timeout=30)
    copied = copy_lora(b.models_dir, only_b)
    third = StandInProcess(
        input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp",
        models={**STANDIN_MODELS, "loras": [nowhere]},
    )
    try:
        await reconnect(b.host_port)
        await eventually(lambda: lists_loras(fleet, b.host_port, before + 1), timeout=30,
                         what="b's endpoint listing the copied LoRA")

        # Only b holds it: every task naming it runs on b (the other runs text2img too).
        ids = [await submit(fleet, only_b) for _ in range(3)]
        finals = [await fleet.wait_final(t) for t in ids]
        assert [f["status"] for f in finals] == ["succeeded"] * 3, finals
        assert {f["endpoint"] for f in finals} == {b.host_port}
        assert finals[0]["model_files"] == [
            {"param": "lora", "node_id": None, "folder": "loras", "filename": only_b}]

        # No endpoint holds this one: the task waits, queued, and is not sent to be refused.
        waiting = await submit(fleet, nowhere)
        await asyncio.sleep(2.0)
        task = (await fleet.http.get(f"/tasks/{waiting}")).json()
        assert task["status"] == "queued" and task["attempt"] == 0, task
        assert task["model_files"][0]["filename"] == nowhere
        events = (await fleet.http.get(f"/tasks/{waiting}/events")).json()
        assert [e["type"] for e in events] == ["task.submitted"]

        # An endpoint holding it joins the fleet: the waiting task runs there.
        for d in ("in", "out", "tmp"):
            (tmp_path / d).mkdir()
        third.start()
        r = await fleet.http.post("/endpoints", json={"endpoint": third.host_port})
        assert r.status_code == 201, r.text
        final = await fleet.wait_final(waiting, timeout=90)
        assert final["status"] == "succeeded" and final["endpoint"] == third.host_port, final
    finally:
        if third.proc is not None:
            await fleet.http.delete(f"/endpoints/{third.host_port}")
            await eventually(lambda: _gone(fleet, third.host_port), timeout=60,
                             what="the third endpoint removed")
            third.stop()
        copied.unlink(missing_ok=True)
        await reconnect(b.host_port)
        await eventually(lambda: lists_loras(fleet, b.host_port, before), timeout=30,
                         what="b's endpoint no longer listing the LoRA")


async def _gone(fleet: Fleet, endpoint: str) -> bool:
    return endpoint not in await endpoints(fleet)
