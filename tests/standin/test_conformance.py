"""The stand-in against the real ComfyUI server's recordings (/work/shared/comfyui-traces).

Each scenario is replayed against a fresh stand-in (tests/standin/trace_replay.py) and compared
with its recording: HTTP methods, paths, status codes, content types and JSON shapes, and each
websocket client's frame sequence. Timing-dependent scenarios slow the nodes down with the
``node_delays`` knob (the real ImageBlur of the trace took ~1 s per node) so that the same
situations arise: a prompt still running when the interrupt comes, prompts still pending.

Deliberate differences of the stand-in, let through by the comparison (``IGNORE`` below: JSON
path patterns, or ``"METHOD path:text"`` / ``":content-type"`` for an HTTP body):

| trace | pattern | why |
| --- | --- | --- |
| c | `*.traceback` (in `execution_error` and its history message) | the real traceback runs through torch's reflect pad (8 frames); the stand-in raises the same exception type and message from its own code, with its own frames |
| m | `GET /:text`, `GET /:content-type` | `GET /` is the real server's web frontend (`index.html`, served as `text/html`); the stand-in has no frontend and answers a short page of its own |

The volatile fields of the traces' README need no entry: ids and timestamps are compared by
type, ids the server makes up are mapped between the runs, PreviewImage's random temp names are
paired by order, and ``status`` broadcasts may sit anywhere among a client's other frames (their
number must match).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

try:
    import trace_replay
except ImportError:  # collected as part of a package
    from . import trace_replay

SCENARIOS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"]

#: per scenario: knob values that recreate the recording's timing
KNOBS: dict[str, dict[str, Any]] = {
    "e": {"node_delays": {"ImageBlur": 0.5}},
    "k": {"node_delays": {"ImageBlur": 0.5}},
    "l": {"node_delays": {"ImageBlur": 0.5}},
}

#: per scenario: JSON path patterns compared by kind only (the deliberate differences above)
IGNORE: dict[str, tuple[str, ...]] = {
    "c": ("*.traceback",),
    "m": ("GET /:text", "GET /:content-type"),
}


# --------------------------------------------------------------------------- the harness itself


def _self_replay(trace: dict[str, Any]) -> trace_replay.Replayed:
    """A 'replay' that answers exactly what was recorded."""
    http = {}
    for e in trace["events"]:
        if e["kind"] == "http":
            r = e["response"]
            http[e["seq"]] = trace_replay.HttpResult(
                r["status"], r["headers"].get("Content-Type"), r["headers"].get("Content-Disposition"),
                json=copy.deepcopy(r.get("json")), text=r.get("text"),
                body_length=r.get("body_length", 1),
                image=trace_replay.image_facts(r["image"]) if r.get("image") else None)
    frames = copy.deepcopy(trace_replay.recorded_frames(trace))
    return trace_replay.Replayed(http, frames, trace_replay.IdMap(), trace_replay.IdMap(), [])


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_recording_conforms_to_itself(name: str) -> None:
    trace = trace_replay.load_trace(name)
    assert trace_replay.compare(trace, _self_replay(trace)) == []


def test_compare_reports_a_changed_frame_and_status() -> None:
    trace = trace_replay.load_trace("a")
    replayed = _self_replay(trace)
    frames = replayed.frames["A"]
    i = next(i for i, f in enumerate(frames) if f["type"] == "executed")
    frames[i]["data"]["data"]["output"]["images"][0]["filename"] = 7
    seq = next(e["seq"] for e in trace["events"] if e["kind"] == "http")
    replayed.http[seq].status = 500
    diffs = trace_replay.compare(trace, replayed)
    assert any("status: recorded 200, got 500" in d for d in diffs)
    assert any("filename: recorded str, got int" in d for d in diffs)


def test_compare_lets_status_broadcasts_move_but_counts_them() -> None:
    trace = trace_replay.load_trace("a")
    replayed = _self_replay(trace)
    frames = replayed.frames["A"]
    status = next(i for i in range(1, len(frames)) if frames[i]["type"] == "status")
    frames.append(frames.pop(status))
    assert trace_replay.compare(trace, replayed) == []
    frames.pop()
    assert trace_replay.compare(trace, replayed) == ["ws[A]: status frames: recorded 4, got 3"]


def test_shape_diff() -> None:
    assert trace_replay.shape_diff({"a": [1, 2.0]}, {"a": [3, 4.5]}) == []
    assert trace_replay.shape_diff({"a": 1}, {"a": 1.0}) == ["$.a: recorded int, got float"]
    assert trace_replay.shape_diff({"a": 1}, {"b": 1}) == ["$: missing keys ['a']", "$: extra keys ['b']"]
    assert trace_replay.shape_diff([1], [1, 2]) == ["$: recorded 1 items, got 2"]
    assert trace_replay.shape_diff({"tb": [1]}, {"tb": [1, 2]}, ignore=["*.tb"]) == []
    assert trace_replay.shape_diff({"tb": [1]}, {"tb": "x"}, ignore=["*.tb"]) == [
        "$.tb: recorded list, got str"]


def test_ids_are_named_by_first_sight() -> None:
    ids = trace_replay.IdMap()
    ids.add("abc-1", "<prompt 1>")
    assert ids.apply({"abc-1": ["/history/abc-1", 3]}) == {"<prompt 1>": ["/history/<prompt 1>", 3]}


@pytest.mark.parametrize("name", SCENARIOS)
def test_signatures_match_summary_json(name: str) -> None:
    trace = trace_replay.load_trace(name)
    summary = json.loads((trace_replay.TRACE_DIR / "summary.json").read_text())[trace["name"]]
    for client, frames in trace_replay.recorded_frames(trace).items():
        ours = [trace_replay.frame_signature(f) for f in frames]
        theirs = summary["ws_types_per_client"].get(client, [])
        # summary.json adds the byte length to binary frames; the PNG bytes are not comparable
        assert [s.split(" len=")[0].rstrip(">") for s in theirs] == [s.rstrip(">") for s in ours]


def test_overlapping_requests_are_found() -> None:
    trace = trace_replay.load_trace("f")
    posts = [e for e in trace["events"] if e["kind"] == "http" and e["request"]["path"] == "/prompt"]
    assert posts[1]["t_send_ms"] < posts[0]["t_ms"]  # A and B posted together
    before = trace_replay.frames_seen_before(trace, posts[0]["t_send_ms"])
    assert before == {"A": 1, "B": 1, "O": 1}


def test_upload_files_keep_the_recorded_equalities() -> None:
    files = trace_replay.UploadFiles(trace_replay.load_trace("b"))
    first, second, third = files.content("s1"), files.content("s2"), files.content("s3")
    assert files.content("s1") == first
    assert len({first, second, third}) == 3
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(first)).mode == "RGBA" and Image.open(BytesIO(second)).mode == "RGB"
    assert Image.open(BytesIO(third)).size == (16, 12)


# --------------------------------------------------------------------------- the stand-in


@pytest.mark.parametrize("name", SCENARIOS)
async def test_standin_conforms_to_the_recording(name: str) -> None:
    testing = pytest.importorskip("comfy_standin.testing", reason="the stand-in server is not there yet")
    trace = trace_replay.load_trace(name)
    async with testing.run_standin() as s:
        s.knobs.update(copy.deepcopy(KNOBS.get(name, {})))
        replayed = await trace_replay.replay(trace, s.url)
    diffs = trace_replay.compare(trace, replayed, IGNORE.get(name, ()))
    assert diffs == [], "\n".join(diffs)
