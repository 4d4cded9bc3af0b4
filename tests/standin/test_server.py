"""The stand-in ComfyUI server over real HTTP and websockets: the behaviour of the recorded
scenarios a, b, c, f, g, h, i, k, l (and e's interrupt) at the level our orchestrator relies on."""

from __future__ import annotations

import asyncio
import io
import json
import os
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from comfy_standin.testing import run_standin

pytestmark = pytest.mark.timeout(60)

JSON_CT = "application/json; charset=utf-8"


class WS:
    """A websocket client that records every frame (text parsed, binary as bytes)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.frames: list[Any] = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host_port: str, client_id: str | None = None, path: str = "/ws") -> WS:
        url = f"ws://{host_port}{path}" + (f"?clientId={client_id}" if client_id else "")
        return cls(await websockets.connect(url, compression=None))

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                self.frames.append(json.loads(msg) if isinstance(msg, str) else msg)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self._new.set()

    @property
    def closed(self) -> bool:
        return self._task.done()

    async def wait_for(self, pred: Any, start: int = 0, within: float = 15.0) -> int:
        """Index of the first frame from ``start`` on that satisfies ``pred``."""

        async def scan() -> int:
            i = start
            while True:
                while i < len(self.frames):
                    if pred(self.frames[i]):
                        return i
                    i += 1
                if self._task.done():
                    raise AssertionError("socket closed")
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(scan(), within)

    async def done(self, prompt_id: str, start: int = 0) -> list[Any]:
        """The frames of a prompt up to its final ``executing`` with ``node: null``."""
        end = await self.wait_for(
            lambda f: (
                isinstance(f, dict)
                and f["type"] == "executing"
                and f["data"]["node"] is None
                and f["data"].get("prompt_id") == prompt_id
            ),
            start,
        )
        return self.frames[start : end + 1]

    async def close(self) -> None:
        await self.conn.close()
        await self._task


def types(frames: list[Any]) -> list[str]:
    out = []
    for f in frames:
        if isinstance(f, bytes):
            out.append(f"binary{int.from_bytes(f[:4], 'big')}")
        elif f["type"] == "executing":
            out.append(f"executing({f['data']['node']})")
        elif f["type"] == "progress_state":
            states = ",".join(f"{k}:{v['state']}" for k, v in f["data"]["nodes"].items())
            out.append(f"progress_state({states})")
        else:
            out.append(f["type"])
    return out


def empty_save(color: int = 0xFF8000, prefix: str = "t", w: int = 64, h: int = 48, batch: int = 1):
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": w, "height": h, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def blur_chain(color: int, n: int = 4) -> dict[str, Any]:
    wf: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color},
        }
    }
    for i in range(2, n + 1):
        wf[str(i)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [str(i - 1), 0], "blur_radius": 1, "sigma": 1.0},
        }
    wf[str(n + 1)] = {
        "class_type": "SaveImage",
        "inputs": {"images": [str(n), 0], "filename_prefix": f"chain{color}"},
    }
    return wf


def png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


async def post(
    c: httpx.AsyncClient, wf: dict[str, Any], client_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": wf, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    r = await c.post("/prompt", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_trace_a_sequence_history_view_and_json_format() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "client-a")
        await ws.wait_for(lambda f: f["type"] == "status")
        assert ws.frames[0] == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-a"},
        }
        r = await c.post(
            "/prompt", json={"prompt": empty_save(prefix="trace_a"), "client_id": "client-a"}
        )
        assert r.headers["content-type"] == JSON_CT
        assert r.text == json.dumps(r.json())  # Python json.dumps defaults, byte for byte
        pid = r.json()["prompt_id"]
        assert r.json()["number"] == 0 and r.json()["node_errors"] == {}
        frames = await ws.done(pid, 1)
        assert types(frames) == [
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "progress_state(1:running)",
            "executing(1)",
            "progress_state(1:finished)",
            "progress_state(1:finished,2:running)",
            "executing(2)",
            "executed",
            "progress_state(1:finished,2:finished)",
            "execution_success",
            "status",
            "executing(None)",
        ]
        assert [
            f["data"]["status"]["exec_info"]["queue_remaining"]
            for f in frames
            if f["type"] == "status"
        ] == [1, 1, 0]
        node = frames[4]["data"]["nodes"]["1"]
        assert node == {
            "value": 0.0,
            "max": 1.0,
            "state": "running",
            "node_id": "1",
            "prompt_id": pid,
            "display_node_id": "1",
            "parent_node_id": None,
            "real_node_id": "1",
        }
        executed = frames[9]["data"]
        assert executed["output"] == {
            "images": [{"filename": "trace_a_00001_.png", "subfolder": "", "type": "output"}]
        }

        hist = (await c.get(f"/api/history/{pid}")).json()[pid]
        assert hist["prompt"] == [
            0,
            pid,
            empty_save(prefix="trace_a"),
            {"client_id": "client-a"},
            ["2"],
        ]
        assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
        assert [m[0] for m in hist["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_success",
        ]
        assert hist["meta"] == {
            "2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}
        }
        assert (await c.get("/history/00000000-0000-0000-0000-000000000000")).json() == {}

        v = await c.get(
            "/view", params={"filename": "trace_a_00001_.png", "subfolder": "", "type": "output"}
        )
        assert v.status_code == 200 and v.headers["content-type"] == "image/png"
        assert v.headers["content-disposition"] == 'filename="trace_a_00001_.png"'
        img = Image.open(io.BytesIO(v.content))
        assert img.size == (64, 48) and img.getpixel((0, 0)) == (255, 128, 0)
        assert json.loads(img.text["prompt"]) == empty_save(prefix="trace_a")
        jpeg = await c.get("/view?filename=trace_a_00001_.png&type=output&preview=jpeg;90")
        assert jpeg.headers["content-type"] == "image/jpeg"
        missing = await c.get("/view", params={"filename": "nope.png"})
        assert missing.status_code == 404 and missing.content == b""
        assert (await c.get("/view", params={"filename": "../secret.png"})).status_code == 400

        for path in ("/queue", "/interrupt", "/history", "/free"):
            e = await c.post(path, content=b"{}" if path != "/interrupt" else b"")
            assert e.status_code == 200 and e.content == b"" and "content-type" not in e.headers
        assert (await c.get("/object_info/NoSuchNode")).json() == {}
        assert "EmptyImage" in (await c.get("/api/object_info/EmptyImage")).json()
        assert (await c.get("/features")).json() == {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600,
        }
        bad = await c.post("/prompt", content=b"{not json")
        assert bad.status_code == 500 and bad.headers["content-type"].startswith("text/plain")
        await ws.close()


async def test_trace_b_upload_rules_and_inverted_pixels() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        a, b = png((16, 12), (0, 0, 128, 255), "RGBA"), png((16, 12), (9, 9, 9))

        async def up(data: bytes, name: str, **fields: str) -> dict[str, Any]:
            r = await c.post(
                "/upload/image", files={"image": (name, data, "image/png")}, data=fields
            )
            assert r.status_code == 200, r.text
            return r.json()

        assert await up(a, "in.png") == {"name": "in.png", "subfolder": "", "type": "input"}
        assert (await up(a, "in.png"))["name"] == "in.png"  # same bytes: nothing written
        assert (await up(b, "in.png"))["name"] == "in (1).png"
        assert (await up(b, "in.png", overwrite="true"))["name"] == "in.png"
        assert (s.input_dir / "in.png").read_bytes() == b
        assert await up(a, "s.png", subfolder="sub") == {
            "name": "s.png",
            "subfolder": "sub",
            "type": "input",
        }
        assert (await up(a, "t.png", type="temp"))["type"] == "temp"
        assert s.counters.uploads == 6
        assert (
            await c.post(
                "/upload/image", files={"image": ("x.png", a)}, data={"subfolder": "../.."}
            )
        ).status_code == 400

        ws = await WS.connect(s.host_port, "cb")
        wf = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "sub/s.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "inv"},
            },
        }
        pid = (await post(c, wf, "cb"))["prompt_id"]
        frames = await ws.done(pid)
        out = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"][0]
        img = Image.open(s.output_dir / out["filename"])
        # float32 like torch: 1 - 128/255 saves as 126 (the recorded pixel)
        assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 126)
        prompt_chunk = json.loads(img.text["prompt"])
        assert len(prompt_chunk["1"]["is_changed"][0]) == 64  # LoadImage's sha256
        await ws.close()


async def test_trace_c_execution_error_then_cached_rerun() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "cc")
        wf = {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255},
            },
            "2": {
                "class_type": "ImageBlur",
                "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 1.0},
            },
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "c"},
            },
        }
        pid = (await post(c, wf, "cc"))["prompt_id"]
        frames = await ws.done(pid)
        assert types(frames)[-4:] == [
            "executing(2)",
            "execution_error",
            "status",
            "executing(None)",
        ]
        err = frames[-3]["data"]
        assert set(err) == {
            "prompt_id",
            "node_id",
            "node_type",
            "executed",
            "exception_message",
            "exception_type",
            "traceback",
            "current_inputs",
            "current_outputs",
            "timestamp",
        }
        assert err["exception_type"] == "RuntimeError" and err["node_type"] == "ImageBlur"
        assert err["exception_message"] == (
            "Argument #4: Padding size should be less than the corresponding input dimension, "
            "but got: padding (31, 31) at dimension 3 of input [1, 3, 8, 8]\n"
        )
        assert err["executed"] == ["1"] and sorted(err["current_outputs"]) == ["1", "2", "3"]
        assert err["current_inputs"]["blur_radius"] == [31]
        assert err["current_inputs"]["image"][0].startswith("tensor([[[[0., 0., 1.],")
        hist = (await c.get(f"/history/{pid}")).json()[pid]
        assert hist["status"]["status_str"] == "error" and hist["status"]["completed"] is False
        assert hist["outputs"] == {} and hist["status"]["messages"][-1][0] == "execution_error"

        wf["2"]["inputs"]["blur_radius"] = 1
        pid2 = (await post(c, wf, "cc"))["prompt_id"]
        frames = await ws.done(pid2, len(ws.frames))
        assert next(f for f in frames if f["type"] == "execution_cached")["data"]["nodes"] == ["1"]
        assert "execution_success" in types(frames)
        await ws.close()


async def test_trace_g_batches_continue_the_counter_from_disk() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        (s.output_dir / "g").mkdir()
        (s.output_dir / "g" / "batch_00007_.png").write_bytes(png((2, 2), (0, 0, 0)))
        ws = await WS.connect(s.host_port, "cg")
        names = []
        for batch, color in ((4, 1), (2, 2)):
            pid = (await post(c, empty_save(color, "g/batch", 8, 8, batch), "cg"))["prompt_id"]
            frames = await ws.done(pid, len(ws.frames))
            out = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"]
            assert all(o["subfolder"] == "g" for o in out)
            names += [o["filename"] for o in out]
        assert names == [f"batch_{n:05}_.png" for n in range(8, 14)]
        assert s.counters.files_written == 6
        await ws.close()


async def test_trace_i_identical_resubmit_is_served_from_cache() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        ws = await WS.connect(s.host_port, "ci")
        first = await ws.done((await post(c, empty_save(prefix="i"), "ci"))["prompt_id"])
        written = s.counters.files_written
        pid = (await post(c, empty_save(prefix="i"), "ci"))["prompt_id"]
        frames = await ws.done(pid, len(first))
        assert types(frames) == [
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "executed",
            "progress_state(2:finished)",
            "execution_success",
            "status",
            "executing(None)",
        ]
        assert frames[3]["data"]["nodes"] == ["1", "2"]
        assert frames[5]["data"]["nodes"]["2"]["value"] == 1  # an int, as recorded
        assert frames[4]["data"]["output"]["images"][0]["filename"] == "i_00001_.png"
        assert s.counters.files_written == written
        hist = (await c.get(f"/history/{pid}")).json()[pid]
        assert hist["outputs"]["2"]["images"][0]["filename"] == "i_00001_.png"
        await ws.close()


async def test_trace_f_frames_go_to_the_prompts_client_only() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        a, b, o = await asyncio.gather(*(WS.connect(s.host_port, cid) for cid in ("A", "B", "O")))
        pa = (await post(c, empty_save(1, "fa"), "A"))["prompt_id"]
        pb = (await post(c, empty_save(2, "fb"), "B"))["prompt_id"]
        await a.done(pa)
        await b.done(pb)
        for ws, mine in ((a, pa), (b, pb)):
            pids = {f["data"].get("prompt_id") for f in ws.frames if f["type"] != "status"}
            assert pids == {mine}
        assert {f["type"] for f in o.frames} == {"status"}
        # No client_id: no execution frames anywhere, but progress_state goes to every socket.
        start = len(o.frames)
        pn = (await post(c, empty_save(3, "fn")))["prompt_id"]
        while not (await c.get(f"/history/{pn}")).json():  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.01)
        await o.wait_for(
            lambda f: (
                f["type"] == "status" and f["data"]["status"]["exec_info"]["queue_remaining"] == 0
            ),
            start,
        )
        kinds = {f["type"] for f in o.frames[start:]}
        assert kinds == {"status", "progress_state"}
        # Without clientId the server makes a uuid4 hex sid; posting with it routes frames here.
        x = await WS.connect(s.host_port)
        await x.wait_for(lambda f: f["type"] == "status")
        sid = x.frames[0]["data"]["sid"]
        assert len(sid) == 32 and int(sid, 16) >= 0
        await x.done((await post(c, empty_save(4, "fx"), sid))["prompt_id"])
        for ws in (a, b, o, x):
            await ws.close()


async def test_trace_h_feature_flags_and_binary_previews() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        wf = {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0xFFFF00},
            },
            "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
        }
        plain = await WS.connect(s.host_port, "plain")
        frames = await plain.done((await post(c, wf, "plain"))["prompt_id"])
        assert types(frames).count("binary1") == 2
        blob = next(f for f in frames if isinstance(f, bytes))
        assert blob[:8] == bytes.fromhex("0000000100000002") and blob[8:12] == b"\x89PNG"
        flagged = await WS.connect(s.host_port, "flagged")
        await flagged.conn.send(
            json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        )
        await flagged.wait_for(lambda f: f["type"] == "feature_flags")
        pid = (await post(c, wf, "flagged"))["prompt_id"]
        frames = await flagged.done(pid)
        t = types(frames)
        assert t.count("binary4") == 2 and t.index("binary4") < t.index("progress")
        blob = next(f for f in frames if isinstance(f, bytes))
        n = int.from_bytes(blob[4:8], "big")
        assert (
            json.loads(blob[8 : 8 + n])["prompt_id"] == pid and blob[8 + n : 12 + n] == b"\x89PNG"
        )
        assert (await c.get(f"/history/{pid}")).json()[pid]["outputs"] == {}
        await plain.close()
        await flagged.close()


async def test_trace_k_reconnect_replays_the_current_node() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        s.knobs.node_delays = {"ImageBlur": 0.3}
        first = await WS.connect(s.host_port, "ck")
        pid = (await post(c, blur_chain(600), "ck"))["prompt_id"]
        await first.wait_for(lambda f: f["type"] == "executing" and f["data"]["node"] == "2")
        await first.close()
        again = await WS.connect(s.host_port, "ck")
        await again.wait_for(lambda f: f["type"] == "executing")
        assert again.frames[0]["type"] == "status" and "sid" in again.frames[0]["data"]
        assert again.frames[1] == {
            "type": "executing",
            "data": {"node": again.frames[1]["data"]["node"]},
        }
        frames = await again.done(pid)
        assert "execution_success" in types(frames)
        await again.close()


async def test_duplicate_client_id_hazard_is_reproduced() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        old = await WS.connect(s.host_port, "dup")
        new = await WS.connect(s.host_port, "dup")
        await new.wait_for(lambda f: f["type"] == "status")
        await old.close()  # its cleanup unregisters the new socket too (protocol §3.7)
        pid = (await post(c, empty_save(5, "dup"), "dup"))["prompt_id"]
        while not (await c.get(f"/history/{pid}")).json():  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(new.frames) == 1 and not new.closed
        await new.close()


async def test_trace_l_front_and_number_priority_and_heap_order() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        s.knobs.stall_worker = True
        ws = await WS.connect(s.host_port, "cl")
        p1 = await post(c, empty_save(1, "l1"), "cl")
        bad = await c.post(
            "/prompt", json={"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}}
        )
        assert bad.status_code == 400  # still takes a number
        p2 = await post(c, empty_save(2, "l2"), "cl")
        p3 = await post(c, empty_save(3, "l3"), "cl", front=True)
        p4 = await post(c, empty_save(4, "l4"), "cl", number=0.5)
        assert [p["number"] for p in (p1, p2, p3, p4)] == [0, 2, -3, 0.5]
        queue = (await c.get("/queue")).json()
        assert queue["queue_running"] == []
        pending = sorted(queue["queue_pending"], key=lambda it: (it[0], it[1]))
        assert [it[1] for it in pending] == [p["prompt_id"] for p in (p3, p1, p4, p2)]
        assert all(len(it) == 5 for it in pending)
        s.knobs.stall_worker = False
        await ws.done(p2["prompt_id"])
        starts = [f["data"]["prompt_id"] for f in ws.frames if f["type"] == "execution_start"]
        assert starts == [p["prompt_id"] for p in (p3, p1, p4, p2)]
        await ws.close()


async def test_trace_e_interrupt_lands_at_the_next_node_and_queue_edits() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        s.knobs.node_delays = {"ImageBlur": 0.3}
        ws = await WS.connect(s.host_port, "ce")
        p1 = (await post(c, blur_chain(100), "ce"))["prompt_id"]
        p2 = (await post(c, blur_chain(200), "ce"))["prompt_id"]
        p3 = (await post(c, empty_save(7, "e3"), "ce"))["prompt_id"]
        await ws.wait_for(lambda f: f["type"] == "executing" and f["data"]["node"] == "2")
        running = (await c.get("/queue")).json()["queue_running"]
        assert [it[1] for it in running] == [p1]
        await c.post("/queue", json={"delete": [p3]})
        assert p3 not in {it[1] for it in (await c.get("/queue")).json()["queue_pending"]}
        await c.post("/interrupt", json={"prompt_id": p2})  # not running: ignored
        await c.post("/interrupt", content=b"")  # bare: global
        frames = await ws.done(p1)
        t = types(frames)
        assert t[-3:] == ["execution_interrupted", "status", "executing(None)"]
        data = frames[-3]["data"]
        assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
        # The flag is seen when the next node starts: its executing frame comes first.
        assert t[-4] == f"executing({data['node_id']})" and data["node_type"] == "ImageBlur"
        assert data["node_id"] not in data["executed"]
        hist = (await c.get(f"/history/{p1}")).json()[p1]
        assert hist["status"]["status_str"] == "error"
        assert hist["status"]["messages"][-1][0] == "execution_interrupted"
        await c.post("/queue", json={"clear": True})
        await c.post("/interrupt", json={"prompt_id": p2})
        await ws.done(p2)
        assert (await c.get(f"/history/{p3}")).json() == {}
        await ws.close()


def _prototype_workflows() -> list[dict[str, Any]]:
    from tests.support.shared import PROTOTYPES

    root = str(PROTOTYPES)
    if not os.path.isdir(root):
        return []
    out = []
    for name in ("text2img", "img2img"):
        with open(f"{root}/{name}.json") as f:
            out.append(json.load(f))
    return out


async def test_prototype_flux_workflows_run_and_missing_models_fail_validation() -> None:
    models = {
        "unet": ["flux1-dev.safetensors"],
        "vae": ["ae.safetensors"],
        "clip": ["t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors"],
    }
    protos = _prototype_workflows()
    if not protos:
        pytest.skip("prototype workflows not present")
    async with run_standin(models=models) as s, httpx.AsyncClient(base_url=s.url) as c:
        await c.post("/upload/image", files={"image": ("src.png", png((64, 48), (10, 200, 30)))})
        ws = await WS.connect(s.host_port, "flux")
        for wf in protos:
            for node in wf.values():
                if node["class_type"] == "LoadImage":
                    node["inputs"]["image"] = "src.png"
                if node["class_type"] == "CLIPTextEncode":
                    node["inputs"]["text"] = "a cat"
            pid = (await post(c, wf, "flux"))["prompt_id"]
            frames = await ws.done(pid, len(ws.frames))
            assert "execution_success" in types(frames) and "progress" in types(frames)
            assert "binary1" in types(frames)  # the sampler's latent previews
            text = [f for f in frames if isinstance(f, dict)]
            out = next(f for f in text if f["type"] == "executed")["data"]["output"]["images"][0]
            assert Image.open(s.output_dir / out["subfolder"] / out["filename"]).format == "PNG"
        wf["12"]["inputs"]["unet_name"] = "missing.safetensors"
        r = await c.post("/prompt", json={"prompt": wf})
        assert r.status_code == 400
        errs = r.json()["node_errors"]["12"]["errors"]
        assert errs[0]["type"] == "value_not_in_list"
        await ws.close()


async def test_simulated_savers_write_valid_files_of_their_kind() -> None:
    async with run_standin() as s, httpx.AsyncClient(base_url=s.url) as c:
        img = {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0x336699},
        }
        wf = {
            "1": img,
            "2": {
                "class_type": "SaveAnimatedWEBP",
                "inputs": {
                    "images": ["1", 0],
                    "filename_prefix": "anim",
                    "fps": 6.0,
                    "lossless": True,
                    "quality": 80,
                    "method": "default",
                },
            },
            "3": {
                "class_type": "SaveWEBM",
                "inputs": {
                    "images": ["1", 0],
                    "filename_prefix": "vid",
                    "codec": "vp9",
                    "fps": 24.0,
                    "crf": 32.0,
                },
            },
            "4": {
                "class_type": "SaveAnimatedPNG",
                "inputs": {
                    "images": ["1", 0],
                    "filename_prefix": "apng",
                    "fps": 6.0,
                    "compress_level": 4,
                },
            },
        }
        ws = await WS.connect(s.host_port, "sim")
        frames = await ws.done((await post(c, wf, "sim"))["prompt_id"])
        outputs = {
            f["data"]["node"]: f["data"]["output"] for f in frames if f["type"] == "executed"
        }
        assert set(outputs) == {"2", "3", "4"}
        assert all(o["animated"] == [True] for o in outputs.values())
        webp = Image.open(s.output_dir / outputs["2"]["images"][0]["filename"])
        assert webp.format == "WEBP" and webp.size == (16, 16)
        apng = Image.open(s.output_dir / outputs["4"]["images"][0]["filename"])
        assert apng.format == "PNG" and apng.size == (16, 16)
        webm = (s.output_dir / outputs["3"]["images"][0]["filename"]).read_bytes()
        assert webm[:4] == bytes.fromhex("1a45dfa3") and b"webm" in webm[:128] and b"V_VP8" in webm
        await ws.close()
