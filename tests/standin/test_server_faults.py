"""The stand-in's fault knobs, control routes, restarts, cleanup extension route and CLI,
over real HTTP and websockets."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from comfy_standin.testing import StandInProcess, run_standin

try:
    from test_server import WS, empty_save, post, types
except ImportError:  # collected as part of a package
    from .test_server import WS, empty_save, post, types

pytestmark = pytest.mark.timeout(60)


async def _history(c: httpx.AsyncClient, pid: str) -> dict:
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        h = (await c.get(f"/history/{pid}")).json()
        if h:
            return h[pid]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pid} never finished")


async def test_fail_knob_fails_the_next_n_prompts_at_a_node_with_a_real_shaped_error() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        r = await c.post("/_standin/knobs", json={"fail": [{"node": "SaveImage", "count": 2}]})
        assert r.status_code == 200 and r.json()["fail"][0]["count"] == 2
        ws = await WS.connect(s.host_port, "ff")
        results = []
        for color in (1, 2, 3):
            pid = (await post(c, empty_save(color, "ff"), "ff"))["prompt_id"]
            results.append(types(await ws.done(pid, len(ws.frames))))
        assert ["execution_error" in t for t in results] == [True, True, False]
        err = next(f for f in ws.frames if f["type"] == "execution_error")["data"]
        assert err["node_id"] == "2" and err["node_type"] == "SaveImage"
        assert err["exception_type"] == "RuntimeError" and err["exception_message"].endswith("\n")
        assert isinstance(err["traceback"], list) and err["executed"] == ["1"]
        assert s.knobs.fail == [] and s.counters.prompts_run == 3
        await ws.close()


async def test_node_id_failure_rule_and_sampler_progress() -> None:
    models = {"checkpoints": ["m.safetensors"]}
    async with run_standin(models=models) as s, httpx.AsyncClient(base_url=s.url) as c:
        wf = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
            "2": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1},
            },
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
            "4": {
                "class_type": "KSampler",
                "inputs": {
                    "model": ["1", 0],
                    "seed": 1,
                    "steps": 3,
                    "cfg": 1.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "positive": ["3", 0],
                    "negative": ["3", 0],
                    "latent_image": ["2", 0],
                    "denoise": 1.0,
                },
            },
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
            "6": {
                "class_type": "SaveImage",
                "inputs": {"images": ["5", 0], "filename_prefix": "ks"},
            },
        }
        ws = await WS.connect(s.host_port, "ks")
        frames = await ws.done((await post(c, wf, "ks"))["prompt_id"])
        text = [f for f in frames if isinstance(f, dict)]  # previews are binary (test_previews)
        progress = [(f["data"]["value"], f["data"]["max"]) for f in text if f["type"] == "progress"]
        assert progress == [(1, 3), (2, 3), (3, 3)]
        out = next(f for f in text if f["type"] == "executed")["data"]["output"]["images"][0]
        assert (s.output_dir / out["filename"]).exists()
        s.knobs.update(
            {
                "fail": [
                    {
                        "node": "4",
                        "count": 1,
                        "exception_type": "torch.OutOfMemoryError",
                        "exception_message": "CUDA out of memory",
                    }
                ]
            }
        )
        wf["4"]["inputs"]["seed"] = 2
        frames = await ws.done((await post(c, wf, "ks"))["prompt_id"], len(ws.frames))
        err = next(
            f for f in frames if isinstance(f, dict) and f["type"] == "execution_error"
        )["data"]
        assert (err["node_id"], err["exception_type"]) == ("4", "torch.OutOfMemoryError")
        await ws.close()


async def test_hang_accepts_connections_but_answers_nothing_until_cleared() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        await c.post("/_standin/knobs", json={"hang": True})
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/system_stats", timeout=0.3)
        assert (await c.get("/_standin/counters")).status_code == 200  # control still answers
        pending = asyncio.create_task(c.get("/prompt", timeout=10))
        await asyncio.sleep(0.1)
        assert not pending.done()
        await c.post("/_standin/knobs", json={"hang": False})
        assert (await pending).status_code == 200


async def test_hang_holds_websocket_frames_and_the_worker_until_cleared() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "hang")
        await ws.wait_for(lambda f: f["type"] == "status")
        pid = (await post(c, empty_save(9, "hang"), "hang"))["prompt_id"]
        await ws.done(pid)
        seen = len(ws.frames)
        s.knobs.hang = True
        s.knobs.node_delay = 0.05
        task = asyncio.create_task(
            c.post("/prompt", json={"prompt": empty_save(10, "hang"), "client_id": "hang"})
        )
        await asyncio.sleep(0.2)
        assert not task.done() and len(ws.frames) == seen
        s.knobs.hang = False
        pid2 = (await task).json()["prompt_id"]
        frames = await ws.done(pid2, seen)
        assert "execution_success" in types(frames)


async def test_lost_and_stalled_prompts() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        s.knobs.lose_next_prompts = 1
        lost = await post(c, empty_save(1, "lost"))
        assert lost["node_errors"] == {}
        assert (await c.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
        assert (await c.get(f"/history/{lost['prompt_id']}")).json() == {}
        assert s.counters.prompts_lost == 1
        s.knobs.stall_worker = True
        stalled = await post(c, empty_save(2, "stalled"))
        await asyncio.sleep(0.05)
        pending = (await c.get("/queue")).json()["queue_pending"]
        assert [it[1] for it in pending] == [stalled["prompt_id"]]
        await c.post("/_standin/knobs", json={"stall_worker": False})
        assert (await _history(c, stalled["prompt_id"]))["status"]["status_str"] == "success"


async def test_drop_websockets_and_refuse_them() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "drop")
        await ws.wait_for(lambda f: f["type"] == "status")
        assert (await c.post("/_standin/drop_websockets")).status_code == 200
        await asyncio.wait_for(ws._task, 5)
        assert ws.closed
        s.knobs.refuse_websockets = True
        with pytest.raises(Exception, match="503"):
            await WS.connect(s.host_port, "again")
        assert s.counters.ws_connects == 1


async def test_slow_view_knob() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        pid = (await post(c, empty_save(1, "sv")))["prompt_id"]
        name = (await _history(c, pid))["outputs"]["2"]["images"][0]["filename"]
        s.knobs.view_delay = 5.0
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/view", params={"filename": name}, timeout=0.2)
        s.knobs.view_delay = 0.0
        assert (await c.get("/view", params={"filename": name})).status_code == 200


async def test_restart_loses_queue_and_history_keeps_files_and_port() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        port = s.port
        done = (await post(c, empty_save(1, "r")))["prompt_id"]
        await _history(c, done)
        await c.post(
            "/upload/image",
            files={"image": ("keep.png", b"not really a png")},
            data={"type": "temp"},
        )
        s.knobs.stall_worker = True
        await post(c, empty_save(2, "r"))
        ws = await WS.connect(s.host_port, "rs")
        await s.restart()
        await asyncio.wait_for(ws._task, 5)
        assert s.port == port
        async with httpx.AsyncClient(base_url=s.url) as c2:
            assert (await c2.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
            assert (await c2.get("/history")).json() == {}
            assert (await post(c2, empty_save(3, "r")))["number"] == 0  # the counter restarts
        assert (s.output_dir / "r_00001_.png").exists()
        assert not (s.temp_dir / "keep.png").exists()  # temp is wiped at start, as the real one
        assert s.counters.restarts == 1
        r = await httpx.AsyncClient().post(s.url + "/_standin/restart", json={"down_s": 0.1})
        assert r.json()["restarting"] is True
        deadline = asyncio.get_running_loop().time() + 30
        while not (s.counters.restarts == 2 and s.server.rt is not None):
            assert asyncio.get_running_loop().time() < deadline, "no restart"
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=s.url) as c3:
            assert (await c3.get("/prompt")).status_code == 200


async def test_cleanup_route_rules(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        assert (await c.get("/comfy-fleet/cleanup/info")).json() == {"version": 2}
        (s.output_dir / "job").mkdir()
        (s.output_dir / "job" / "a.png").write_bytes(b"x")
        (s.input_dir / "in.png").write_bytes(b"x")
        (s.input_dir / "link.png").symlink_to(outside)
        (s.input_dir / "dir").mkdir()

        async def delete(**body: object) -> httpx.Response:
            return await c.post("/comfy-fleet/cleanup/delete", json=body)

        r = await delete(type="output", filename="a.png", subfolder="job")
        assert (r.status_code, r.json()) == (200, {"deleted": True})
        assert not (s.output_dir / "job" / "a.png").exists()
        assert (await delete(type="input", filename="in.png")).status_code == 200
        assert (await delete(type="input", filename="in.png")).status_code == 404
        assert (await delete(type="output", filename="missing.png")).status_code == 404
        for bad in (
            {"type": "input", "filename": "/etc/passwd"},
            {"type": "input", "filename": "../secret.txt"},
            {"type": "input", "filename": "x.png", "subfolder": "../.."},
            {"type": "input", "filename": "a\nb.png"},
            {"type": "input", "filename": "link.png"},
            {"type": "input", "filename": "dir"},
            {"type": "models", "filename": "x"},
            {"type": "input", "filename": ""},
        ):
            assert (await delete(**bad)).status_code == 400, bad
        assert outside.read_text() == "keep me"
        assert s.counters.files_deleted == 2
        assert (
            await c.post(
                "/api/comfy-fleet/cleanup/delete", json={"type": "input", "filename": "zz"}
            )
        ).status_code == 404
        s.knobs.cleanup_extension = False
        assert (await c.get("/comfy-fleet/cleanup/info")).status_code == 404
        assert (await delete(type="output", filename="missing.png")).status_code == 404


async def test_control_routes_read_and_change_knobs() -> None:
    async with run_standin(node_delay=0.01) as s, httpx.AsyncClient(base_url=s.url) as c:
        assert (await c.get("/_standin/knobs")).json()["node_delay"] == 0.01
        r = await c.post("/_standin/knobs", json={"node_delays": {"ImageBlur": 0.2}})
        assert (
            r.json()["node_delays"] == {"ImageBlur": 0.2} and s.knobs.delay_for("ImageBlur") == 0.2
        )
        assert (await c.post("/_standin/knobs", json={"nope": 1})).status_code == 400
        counters = (await c.get("/_standin/counters")).json()
        assert counters["prompts_run"] == 0 and "files_written" in counters


def test_subprocess_standin_cli_restart_and_stop(tmp_path: Path) -> None:
    proc = StandInProcess(
        input_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        temp_dir=tmp_path / "tmp",
        models={"checkpoints": ["a.safetensors", "b.safetensors"]},
    )
    with proc:
        port = proc.port
        with httpx.Client(base_url=proc.url) as c:
            assert c.get("/models/checkpoints").json() == ["a.safetensors", "b.safetensors"]
            pid = c.post("/prompt", json={"prompt": empty_save(1, "sub")}).json()["prompt_id"]
            deadline = time.monotonic() + 30
            while not c.get(f"/history/{pid}").json():
                assert time.monotonic() < deadline, "prompt never finished"
                time.sleep(0.01)
            assert (tmp_path / "out" / "sub_00001_.png").exists()
        proc.restart()
        assert proc.port == port
        with httpx.Client(base_url=proc.url) as c:
            assert c.get("/history").json() == {}
    assert proc.proc is None


def test_one_process_runs_several_independent_standins(tmp_path: Path) -> None:
    """`--count 3`: three servers in one process, each with its own queue, history, knobs and
    directories (the benchmarks' GPU hosts)."""
    proc = StandInProcess(input_dir=tmp_path / "in", output_dir=tmp_path / "out", count=3)
    with proc:
        assert len(proc.members) == 3 and len({m.port for m in proc.members}) == 3
        first, second, third = proc.members
        with httpx.Client(base_url=second.url) as c:
            assert c.post("/_standin/knobs", json={"node_delay": 0.01}).status_code == 200
            pid = c.post("/prompt", json={"prompt": empty_save(1, "two")}).json()["prompt_id"]
            deadline = time.monotonic() + 30
            while not c.get(f"/history/{pid}").json():
                assert time.monotonic() < deadline, "prompt never finished"
                time.sleep(0.01)
        assert (second.output_dir / "two_00001_.png").exists()
        assert second.output_dir == tmp_path / "out" / "standin-1"
        for other in (first, third):
            with httpx.Client(base_url=other.url) as c:
                assert c.get("/history").json() == {}
                assert c.get("/_standin/knobs").json()["node_delay"] == 0.0
            assert not any(other.output_dir.iterdir())
    assert proc.proc is None


def test_cli_refuses_a_count_below_one(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "comfy_standin", "--input-dir", str(tmp_path), "--output-dir",
         str(tmp_path), "--count", "0"],
        capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.returncode == 2 and "--count must be at least 1" in out.stderr


def test_cli_help_runs() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "comfy_standin", "--help"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.returncode == 0 and "--models" in out.stdout
