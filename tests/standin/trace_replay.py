"""Replay a recorded ComfyUI trace against a live server and diff the result with the recording.

A trace (``/work/shared/comfyui-traces/<x>_*.json``, see its README) is an ordered list of HTTP
exchanges and websocket events. ``replay(trace, base_url)`` re-sends the requests in order with
the recorded bodies and drives the websockets as recorded. Before each action it waits until every
socket has received as many frames as the recording had seen when that action was taken; that is
what the recorder's own waits amounted to, and it puts the server in the same situation (a prompt
still running, two pending, ...). Requests that overlapped in the recording overlap here too.
Ids the server makes up (prompt ids, server-made sids) are mapped from the recording to the replay.

``compare(trace, replayed)`` then lists the differences: per HTTP exchange the method, path,
status, content type and JSON shape (keys and value types); per websocket client the frame-type
sequence (types, ``executing`` node ids and ``progress_state`` node states, as summary.json
writes them) and each frame's JSON shape. Only what the README calls volatile is let through:
ids and timestamps are compared by type, ``status`` broadcasts may sit anywhere among a client's
other frames, and ``ignore`` patterns (``fnmatch`` on a JSON path) mark deliberate differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import websockets
import yarl
from PIL import Image

from tests.support.shared import TRACES as TRACE_DIR
FRAME_WAIT_S = 15.0
_TEMP_PREFIX = re.compile(r"_temp_[a-z]{5}_")


def load_trace(name: str) -> dict[str, Any]:
    """A trace by its letter (``"a"``) or file stem (``"a_empty_image_save"``)."""
    matches = sorted(TRACE_DIR.glob(f"{name}_*.json")) or sorted(TRACE_DIR.glob(f"{name}.json"))
    if not matches:
        raise FileNotFoundError(name)
    return json.loads(matches[0].read_text())


# --------------------------------------------------------------------------- frames


def frame_signature(frame: dict[str, Any]) -> str:
    """A frame as summary.json writes it: ``executing(2)``, ``progress_state(1:finished)``, ..."""
    if frame["frame"] != "text":
        return f"<binary event_type={frame.get('event_type')}>"
    kind = frame["type"]
    data = frame["data"].get("data") if isinstance(frame["data"], dict) else None
    if kind == "executing" and isinstance(data, dict):
        return f"executing({data.get('node')})"
    if kind == "progress_state" and isinstance(data, dict):
        nodes = data.get("nodes", {})
        return "progress_state(" + ",".join(f"{k}:{v['state']}" for k, v in nodes.items()) + ")"
    return str(kind)


def recorded_frames(trace: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per client, the recorded frames as ``{"frame", "type", "data", "event_type"}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in trace["events"]:
        if e["kind"] == "ws_connect":
            out.setdefault(e["client"], [])
        if e["kind"] == "ws_recv":
            out.setdefault(e["client"], []).append({
                "frame": e["frame"], "type": e.get("type"), "data": e.get("data"),
                "event_type": e.get("event_type"),
            })
    return out


# --------------------------------------------------------------------------- shapes


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_diff(recorded: Any, actual: Any, path: str = "$", ignore: Iterable[str] = ()) -> list[str]:
    """Differences of keys and value types between two JSON values (lists element by element).

    A path matching an ``ignore`` pattern is compared by kind only (an ignored list may differ
    in length and content).
    """
    ignore = tuple(ignore)
    rk, ak = _kind(recorded), _kind(actual)
    if rk != ak:
        return [f"{path}: recorded {rk}, got {ak}"]
    if any(fnmatch.fnmatchcase(path, pattern) for pattern in ignore):
        return []
    diffs: list[str] = []
    if rk == "object":
        missing = [k for k in recorded if k not in actual]
        extra = [k for k in actual if k not in recorded]
        if missing:
            diffs.append(f"{path}: missing keys {missing}")
        if extra:
            diffs.append(f"{path}: extra keys {extra}")
        for key in recorded:
            if key in actual:
                diffs += shape_diff(recorded[key], actual[key], f"{path}.{key}", ignore)
    elif rk == "list":
        if len(recorded) != len(actual):
            diffs.append(f"{path}: recorded {len(recorded)} items, got {len(actual)}")
        for i, (r, a) in enumerate(zip(recorded, actual, strict=False)):
            diffs += shape_diff(r, a, f"{path}[{i}]", ignore)
    return diffs


class IdMap:
    """Names for made-up ids so that two runs compare: each id becomes ``<ID n>`` by first sight."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add(self, value: str, name: str) -> None:
        if value and value not in self.names:
            self.names[value] = name

    def apply(self, value: Any) -> Any:
        if isinstance(value, str):
            for raw, name in self.names.items():
                if raw in value:
                    value = value.replace(raw, name)
            return value
        if isinstance(value, list):
            return [self.apply(v) for v in value]
        if isinstance(value, dict):
            return {self.apply(k): self.apply(v) for k, v in value.items()}
        return value


# --------------------------------------------------------------------------- replay


@dataclasses.dataclass
class HttpResult:
    status: int
    content_type: str | None
    content_disposition: str | None
    json: Any = None
    text: str | None = None
    body_length: int = 0
    image: dict[str, Any] | None = None


@dataclasses.dataclass
class Replayed:
    """What the server answered: per recorded HTTP seq its result, per client its frames."""

    http: dict[int, HttpResult]
    frames: dict[str, list[dict[str, Any]]]
    recorded_ids: IdMap
    actual_ids: IdMap
    problems: list[str]


class _Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self, url: str) -> None:
        self.ws = await websockets.connect(url, max_size=None, compression=None)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for msg in self.ws:
                if isinstance(msg, str):
                    data = json.loads(msg)
                    frame = {"frame": "text", "type": data.get("type"), "data": data,
                             "event_type": None}
                else:
                    raw = bytes(msg)
                    frame = {"frame": "binary", "type": None, "data": None,
                             "event_type": int.from_bytes(raw[:4], "big")}
                async with self.changed:
                    self.frames.append(frame)
                    self.changed.notify_all()

    async def wait_count(self, count: int, timeout: float) -> bool:
        async with self.changed:
            try:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: len(self.frames) >= count), timeout)
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)


def _actions(trace: dict[str, Any]) -> list[tuple[float, int, dict[str, Any]]]:
    acts = []
    for e in trace["events"]:
        if e["kind"] == "http":
            acts.append((e["t_send_ms"], e["seq"], e))
        elif e["kind"] in ("ws_connect", "ws_send", "ws_close"):
            acts.append((e["t_ms"], e["seq"], e))
    return sorted(acts, key=lambda a: (a[0], a[1]))


def frames_seen_before(trace: dict[str, Any], t_ms: float) -> dict[str, int]:
    """Per client, how many frames the recording had received before client time ``t_ms``."""
    seen: dict[str, int] = {}
    for e in trace["events"]:
        if e["kind"] == "ws_recv" and e["t_ms"] < t_ms:
            seen[e["client"]] = seen.get(e["client"], 0) + 1
    return seen


class UploadFiles:
    """Stand-ins for the recorded upload files: same size class, same equalities (by sha256).

    The first distinct file is the recorder's RGBA gradient, the second its RGB one, later ones
    RGBA with pixel (0,0) changed; so "same bytes" and "other bytes" uploads behave as recorded.
    """

    def __init__(self, trace: dict[str, Any]) -> None:
        info = trace.get("input_png") or {}
        self.width = int(info.get("width", 16))
        self.height = int(info.get("height", 12))
        self.by_sha: dict[str, bytes] = {}

    def content(self, sha256: str) -> bytes:
        if sha256 not in self.by_sha:
            n = len(self.by_sha)
            data = make_png(self.width, self.height, alpha=n != 1)
            if n >= 2:
                im = Image.open(io.BytesIO(data))
                im.putpixel((0, 0), (n % 256, n // 256, 7, 255))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = buf.getvalue()
            self.by_sha[sha256] = data
        return self.by_sha[sha256]


def make_png(w: int = 16, h: int = 12, alpha: bool = True) -> bytes:
    """The recorder's test image: a gradient, RGBA with a half-transparent right half, or RGB."""
    im = Image.new("RGBA" if alpha else "RGB", (w, h))
    for y in range(h):
        for x in range(w):
            px: tuple[int, ...] = (x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), 128)
            if alpha:
                px = (*px, 255 if x < w // 2 else 64)
            im.putpixel((x, y), px)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _multipart(parts: list[dict[str, Any]], files: UploadFiles) -> tuple[bytes, str]:
    boundary = "----trace-replay" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    chunks = []
    for p in parts:
        if "filename" in p:
            chunks.append(
                (f'--{boundary}\r\nContent-Disposition: form-data; name="{p["name"]}"; '
                 f'filename="{p["filename"]}"\r\nContent-Type: {p["content_type"]}\r\n\r\n').encode()
                + files.content(p["sha256"]) + b"\r\n")
        else:
            chunks.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{p["name"]}"\r\n\r\n'
                f'{p["value"]}\r\n'.encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _describe(status: int, headers: Any, payload: bytes) -> HttpResult:
    ctype = headers.get("Content-Type")
    res = HttpResult(status, ctype, headers.get("Content-Disposition"), body_length=len(payload))
    if ctype and ctype.startswith("application/json"):
        try:
            res.json = json.loads(payload)
        except ValueError:
            res.text = payload.decode(errors="replace")
    elif ctype and ctype.startswith("text/"):
        res.text = payload.decode(errors="replace")
    elif payload:
        with contextlib.suppress(Exception):
            im = Image.open(io.BytesIO(payload))
            info: dict[str, Any] = {"format": im.format, "width": im.width, "height": im.height,
                                    "mode": im.mode, "text_chunks": dict(getattr(im, "text", {}) or {})}
            if im.mode in ("RGB", "RGBA", "L"):
                px = im.getpixel((0, 0))
                info["pixel_0_0"] = list(px) if isinstance(px, tuple) else px
            res.image = image_facts(info)
    return res


def image_facts(info: dict[str, Any]) -> dict[str, Any]:
    """What must match of an image: format, size, mode, text chunk names, and for lossless
    formats pixel (0,0) (the model-free nodes compute real pixels)."""
    facts = {k: info.get(k) for k in ("format", "width", "height", "mode")}
    facts["text_chunks"] = sorted(info.get("text_chunks") or {})
    if info.get("format") == "PNG":
        facts["pixel_0_0"] = info.get("pixel_0_0")
    return facts


async def replay(trace: dict[str, Any], base_url: str, frame_wait_s: float = FRAME_WAIT_S) -> Replayed:
    """Re-run ``trace`` against the server at ``base_url`` (``http://127.0.0.1:port``)."""
    rec_ids, act_ids = IdMap(), IdMap()
    to_actual: dict[str, str] = {}  # recorded made-up id -> the replay's
    clients: dict[str, _Client] = {}
    results: dict[int, HttpResult] = {}
    problems: list[str] = []
    deficit: dict[str, int] = {}  # frames a client never got: later waits expect that many fewer
    files = UploadFiles(trace)
    ws_base = "ws" + base_url[len("http"):]
    pending: list[asyncio.Task[None]] = []
    counter = [0]

    def pair(recorded: str, actual: str, kind: str) -> None:
        if not recorded or recorded in to_actual:
            return
        counter[0] += 1
        name = f"<{kind} {counter[0]}>"
        to_actual[recorded] = actual
        rec_ids.add(recorded, name)
        act_ids.add(actual, name)

    def subst(value: Any) -> Any:
        if isinstance(value, str):
            for raw, new in to_actual.items():
                value = value.replace(raw, new)
            return value
        if isinstance(value, list):
            return [subst(v) for v in value]
        if isinstance(value, dict):
            return {subst(k): subst(v) for k, v in value.items()}
        return value

    async def wait_frames(seen: dict[str, int]) -> None:
        for name, count in seen.items():
            client = clients.get(name)
            if client is None:
                continue
            want = count - deficit.get(name, 0)
            if not await client.wait_count(want, frame_wait_s):
                short = want - len(client.frames)
                deficit[name] = deficit.get(name, 0) + short
                problems.append(f"ws[{name}]: waited for frame {want}, got {len(client.frames)}")

    async def do_http(session: aiohttp.ClientSession, e: dict[str, Any]) -> None:
        req = e["request"]
        # The recorder's server was 127.0.0.1:8188 (headers were not given placeholders).
        host = yarl.URL(base_url).authority
        headers = {k: v.replace("127.0.0.1:8188", host).replace("127.0.0.1:<PORT>", host)
                   for k, v in (req.get("headers") or {}).items()}
        data: bytes | None = None
        if "json" in req:
            data = json.dumps(subst(req["json"])).encode()
            headers["Content-Type"] = "application/json"
        elif "body_text" in req:
            data = req["body_text"].encode()
        elif "multipart" in req:
            data, headers["Content-Type"] = _multipart(req["multipart"], files)
        url = yarl.URL(base_url + subst(req["path"]), encoded=True)
        async with session.request(req["method"], url, data=data, headers=headers) as resp:
            payload = await resp.read()
            res = _describe(resp.status, resp.headers, payload)
        results[e["seq"]] = res
        recorded = e["response"].get("json")
        if isinstance(recorded, dict) and isinstance(res.json, dict):
            if isinstance(recorded.get("prompt_id"), str) and isinstance(res.json.get("prompt_id"), str):
                pair(recorded["prompt_id"], res.json["prompt_id"], "prompt")

    recorded_temp = _temp_names(
        e["data"] for e in trace["events"] if e["kind"] == "ws_recv" and e["frame"] == "text")

    def pair_temp_names() -> None:
        # PreviewImage's random 5-letter part is volatile: pair names by order of appearance.
        actual = _temp_names(f["data"] for c in clients.values() for f in c.frames if f["data"])
        for rec, act in zip(recorded_temp, actual, strict=False):
            pair(rec, act, "temp")

    acts = _actions(trace)
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        for i, (t_ms, _seq, e) in enumerate(acts):
            await wait_frames(frames_seen_before(trace, t_ms))
            pair_temp_names()
            kind = e["kind"]
            if kind == "http":
                task = asyncio.create_task(do_http(session, e))
                next_t = acts[i + 1][0] if i + 1 < len(acts) else float("inf")
                if e["t_ms"] <= next_t:  # the recorder had its answer before it went on
                    await task
                else:
                    pending.append(task)
            elif kind == "ws_connect":
                client = clients[e["client"]] = _Client(e["client"])
                await client.connect(ws_base + subst(e["path"]))
                if "clientId=" not in e["path"]:
                    await _pair_sid(trace, e["client"], client, pair, frame_wait_s)
            elif kind == "ws_send":
                await clients[e["client"]].ws.send(subst(e["raw"]))
            elif kind == "ws_close":
                await clients[e["client"]].close()
        for task in pending:
            await task
    for client in clients.values():
        await client.close()
    frames = {name: c.frames for name, c in clients.items()}
    return Replayed(results, frames, rec_ids, act_ids, problems)


def _temp_names(values: Iterable[Any]) -> list[str]:
    """Distinct PreviewImage temp names (``ComfyUI_temp_abcde_``) in order of appearance."""
    names: list[str] = []
    for value in values:
        for m in _TEMP_PREFIX.finditer(json.dumps(value)):
            if m.group(0) not in names:
                names.append(m.group(0))
    return names


async def _pair_sid(trace: dict[str, Any], name: str, client: _Client, pair: Any, wait: float) -> None:
    """A socket without clientId gets a server-made sid in its first frame: map it to the recorded."""
    recorded = next(
        (e["data"]["data"].get("sid") for e in trace["events"]
         if e["kind"] == "ws_recv" and e["client"] == name and e.get("type") == "status"), None)
    if recorded and await client.wait_count(1, wait):
        data = client.frames[0]["data"] or {}
        actual = (data.get("data") or {}).get("sid")
        if isinstance(actual, str):
            pair(recorded, actual, "sid")


# --------------------------------------------------------------------------- compare

_TEMP_NAME = re.compile(r"_temp_[a-z]{5}_")


def compare(trace: dict[str, Any], replayed: Replayed, ignore: Iterable[str] = ()) -> list[str]:
    """Every difference between the recording and the replay (empty when they conform)."""
    ignore = tuple(ignore)
    diffs = list(replayed.problems)
    for e in trace["events"]:
        if e["kind"] != "http":
            continue
        req, rec = e["request"], e["response"]
        where = f"#{e['seq']} {req['method']} {req['path']}"
        got = replayed.http.get(e["seq"])
        if got is None:
            diffs.append(f"{where}: not replayed")
            continue
        method_path = f"{req['method']} {req['path']}"
        diffs += [f"{where}: {d}" for d in _http_diff(method_path, rec, got, replayed, ignore)]
    recorded = recorded_frames(trace)
    for name, rec_frames in recorded.items():
        got_frames = replayed.frames.get(name, [])
        diffs += [f"ws[{name}]: {d}" for d in _frames_diff(rec_frames, got_frames, replayed, ignore)]
    return diffs


def _http_diff(where: str, rec: dict[str, Any], got: HttpResult, ids: Replayed,
               ignore: tuple[str, ...]) -> list[str]:
    """``where`` is ``METHOD path``; ignore ``"GET /:text"`` / ``"GET /:content-type"`` skip those."""
    diffs = []
    if rec["status"] != got.status:
        diffs.append(f"status: recorded {rec['status']}, got {got.status}")
    def ignored(what: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{where}:{what}", p) for p in ignore)

    rec_ctype = rec.get("headers", {}).get("Content-Type")
    if rec_ctype != got.content_type and not ignored("content-type"):
        diffs.append(f"Content-Type: recorded {rec_ctype!r}, got {got.content_type!r}")
    rec_disp = rec.get("headers", {}).get("Content-Disposition")
    got_disp = got.content_disposition
    if (rec_disp is None) != (got_disp is None) or (
        rec_disp and _TEMP_NAME.sub("_temp_", rec_disp) != _TEMP_NAME.sub("_temp_", got_disp or "")
    ):
        diffs.append(f"Content-Disposition: recorded {rec_disp!r}, got {got_disp!r}")
    if "json" in rec:
        diffs += shape_diff(ids.recorded_ids.apply(rec["json"]), ids.actual_ids.apply(got.json),
                            "$", ignore)
    elif "text" in rec:
        if rec["text"] != got.text and not ignored("text"):
            diffs.append(f"text: recorded {rec['text']!r}, got {got.text!r}")
    else:
        if (rec.get("body_length", 1) == 0) != (got.body_length == 0):
            diffs.append(f"body: recorded length {rec.get('body_length')}, got {got.body_length}")
        if rec.get("image"):
            want = image_facts(rec["image"])
            if got.image != want:
                diffs.append(f"image: recorded {want}, got {got.image}")
    return diffs


def _frames_diff(rec: list[dict[str, Any]], got: list[dict[str, Any]], ids: Replayed,
                 ignore: tuple[str, ...]) -> list[str]:
    """Non-status frames in order; status broadcasts by count and shape (their slot is volatile)."""
    diffs = []
    rec_main = [f for f in rec if f["type"] != "status"]
    got_main = [f for f in got if f["type"] != "status"]
    rec_sigs = [frame_signature(f) for f in rec_main]
    got_sigs = [frame_signature(f) for f in got_main]
    if rec_sigs != got_sigs:
        diffs.append(f"frames: recorded {rec_sigs}, got {got_sigs}")
    else:
        for i, (r, g) in enumerate(zip(rec_main, got_main, strict=True)):
            if r["frame"] == "text":
                diffs += shape_diff(ids.recorded_ids.apply(r["data"]), ids.actual_ids.apply(g["data"]),
                                    f"{rec_sigs[i]}#{i}", ignore)
    rec_status = [f for f in rec if f["type"] == "status"]
    got_status = [f for f in got if f["type"] == "status"]
    if len(rec_status) != len(got_status):
        diffs.append(f"status frames: recorded {len(rec_status)}, got {len(got_status)}")
    if rec and got and (rec[0]["type"] == "status") != (got[0]["type"] == "status"):
        diffs.append(f"first frame: recorded {rec[0]['type']}, got {got[0]['type']}")
    for i, (r, g) in enumerate(zip(rec_status, got_status, strict=False)):
        diffs += shape_diff(ids.recorded_ids.apply(r["data"]), ids.actual_ids.apply(g["data"]),
                            f"status#{i}", ignore)
    return diffs
