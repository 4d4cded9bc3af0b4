"""The websocket frame parser, fed the frames the real ComfyUI sent (the recorded traces).
Pure, no I/O beyond reading the recordings."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from comfy_fleet.comfy import frames, history
from comfy_fleet.prompts.inflight import InflightPrompt
from tests.support.shared import TRACES

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason="the ComfyUI traces are not beside the checkout")


def received(name: str | None = None) -> Iterator[dict[str, Any]]:
    """Every frame a client received, in every trace (or in the one named)."""
    paths = [TRACES / f"{name}.json"] if name else sorted(TRACES.glob("*.json"))
    for path in paths:
        trace = json.loads(path.read_text())
        if not isinstance(trace, dict) or "events" not in trace:
            continue  # object_info and summary files
        yield from (e for e in trace["events"] if e["kind"] == "ws_recv")


def text_frames(name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in received(name) if e["frame"] == "text"]


def test_every_recorded_text_frame_parses_to_its_type() -> None:
    seen = set()
    for e in text_frames():
        frame = frames.parse(e["raw"])
        data = e["data"]["data"]
        seen.add(type(frame))
        if e["type"] == "status":
            assert frame == frames.Status(data["status"]["exec_info"]["queue_remaining"])
        elif e["type"] == "execution_start":
            assert frame == frames.Started(data["prompt_id"])
        elif e["type"] == "progress":
            assert frame == frames.Progress(data["prompt_id"], data["value"], data["max"], str(data["node"]))
        elif e["type"] in ("execution_error", "execution_interrupted"):
            assert isinstance(frame, frames.Failed) and frame.prompt_id == data["prompt_id"]
        elif e["type"] == "executing" and data["node"] is None:
            assert frame == frames.Done(data["prompt_id"])
        elif e["type"] == "executed":
            assert frame == frames.Executed(data["prompt_id"], data["node"], data["output"])
        elif e["type"] == "execution_success":
            assert frame == frames.Succeeded(data["prompt_id"])
        else:
            assert frame == frames.Other(e["type"], data.get("prompt_id")), e["raw"]
    # The recordings hold every kind we act on.
    assert {
        frames.Status, frames.Started, frames.Progress, frames.Executed, frames.Succeeded,
        frames.Failed, frames.Done, frames.Other,
    } <= seen


def test_an_execution_error_carries_the_task_error_fields() -> None:
    [e] = [e for e in text_frames("c_execution_error") if e["type"] == "execution_error"]
    frame = frames.parse(e["raw"])
    assert isinstance(frame, frames.Failed) and frame.kind == history.ERROR
    assert frame.error["code"] == history.CODE_EXECUTION
    assert frame.error["message"].startswith("Argument #4: Padding size")
    assert (frame.error["node_id"], frame.error["node_type"]) == ("2", "ImageBlur")
    assert frame.error["details"]["exception_type"] == "RuntimeError"
    assert 0 < len(frame.error["details"]["traceback"]) <= 8
    assert frame.outcome() == history.Outcome(history.ERROR, [], frame.error)


def test_an_interruption_names_the_node() -> None:
    e = next(e for e in text_frames("e_interrupt") if e["type"] == "execution_interrupted")
    frame = frames.parse(e["raw"])
    assert isinstance(frame, frames.Failed) and frame.kind == history.INTERRUPTED
    assert frame.error["code"] == history.CODE_INTERRUPTED
    assert frame.error["message"] == "interrupted at node 4 (ImageBlur)"


def test_one_prompt_reads_as_started_then_done() -> None:
    """Prompt (a), as its client saw it: the frames we act on, in order."""
    acted = [
        f for f in (frames.parse(e["raw"]) for e in text_frames("a_empty_image_save") if e["client"] == "A")
        if isinstance(f, frames.Started | frames.Progress | frames.Failed | frames.Done)
    ]
    assert [type(f) for f in acted] == [frames.Started, frames.Done]
    assert acted[0].prompt_id == acted[1].prompt_id


def recorded_binary_frame(e: dict[str, Any]) -> bytes:
    """The exact bytes of a recorded binary frame of trace h. The recording keeps the head,
    the metadata, the decoded image's size and colour and the frame's sha256, not the bytes:
    the image is a solid PNG that Pillow encodes at compress level 1 as the real node did,
    and the sha256 proves the rebuilt frame is the one the server sent."""
    png = io.BytesIO()
    image = e["image"]
    Image.new(image["mode"], (image["width"], image["height"]), tuple(image["pixel_0_0"])).save(
        png, format="PNG", compress_level=1
    )
    if e["event_type"] == 1:
        raw = struct.pack(">II", 1, e["image_format"]) + png.getvalue()
    else:
        meta = json.dumps(e["metadata"]).encode()  # Python's json.dumps, as the server's
        raw = struct.pack(">II", 4, len(meta)) + meta + png.getvalue()
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == (e["length"], e["sha256"])
    return raw


def test_recorded_preview_frames_parse_to_previews() -> None:
    binary = [e for e in received("h_save_image_websocket") if e["frame"] == "binary"]
    assert {e["event_type"] for e in binary} == {1, 4}
    for e in binary:
        frame = frames.parse(recorded_binary_frame(e))
        assert isinstance(frame, frames.Preview)
        assert frame.content_type == "image/png"
        # type 1 names no prompt (it is the running one's); type 4's metadata does
        assert frame.prompt_id == (e["metadata"]["prompt_id"] if e["event_type"] == 4 else None)
        decoded = Image.open(io.BytesIO(frame.image))
        assert (decoded.format, decoded.size) == ("PNG", (e["image"]["width"], e["image"]["height"]))


def test_a_latent_preview_is_a_jpeg_of_type_1_format_1() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"rest of the image"
    frame = frames.parse(struct.pack(">II", 1, 1) + jpeg)
    assert frame == frames.Preview(None, "image/jpeg", jpeg)


@pytest.mark.parametrize(
    "raw",
    [
        b"\0\0",  # shorter than an event type
        struct.pack(">I", 1),  # no image format
        struct.pack(">II", 1, 2),  # no image
        struct.pack(">II", 1, 7) + b"img",  # an image format ComfyUI does not have
        struct.pack(">II", 4, 50) + b"{}",  # metadata longer than the frame
        struct.pack(">II", 4, 2) + b"[]img",  # metadata not an object
        struct.pack(">II", 4, 3) + b"{x}img",  # metadata not JSON
        struct.pack(">II", 4, 2) + b"{}img",  # no image_type
        struct.pack(">II", 4, 22) + b'{"image_type": "text"}img',  # not an image type
        struct.pack(">II", 3, 1) + b"1text",  # TEXT (progress text of a node)
    ],
)
def test_binary_frames_that_are_no_preview_give_their_event_type(raw: bytes) -> None:
    frame = frames.parse(raw)
    assert frame == frames.Binary(
        int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None, len(raw)
    )


@pytest.mark.parametrize(
    "raw",
    ["", "not json", "[1, 2]", '"status"', '{"type": "status", "data": [1]}'],
)
def test_what_is_not_a_frame_is_unreadable(raw: str) -> None:
    assert frames.parse(raw) == frames.Unreadable()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type": "status", "data": {}}', frames.Status(None)),
        ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "2"}}}}', frames.Status(None)),
        ('{"type": "status", "data": {"status": "busy"}}', frames.Status(None)),
        ('{"type": "progress", "data": {"prompt_id": "p", "value": 1.5, "max": 2}}', frames.Other("progress", "p")),
        ('{"type": "progress", "data": {"prompt_id": "p", "value": 1, "max": 2}}', frames.Progress("p", 1, 2, None)),
        ('{"type": "executing", "data": {"prompt_id": "p", "node": "3"}}', frames.Other("executing", "p")),
        ('{"type": "execution_start", "data": {"prompt_id": 7}}', frames.Other("execution_start", None)),
        ('{"type": "execution_start"}', frames.Other("execution_start", None)),
        ('{"data": {"prompt_id": "p"}}', frames.Other(None, "p")),
    ],
)
def test_odd_frames(raw: str, expected: frames.Frame) -> None:
    assert frames.parse(raw) == expected


def recorded_histories() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(trace, prompt_id, history entry) of every successful prompt whose entry was read."""
    for path in sorted(TRACES.glob("*.json")):
        trace = json.loads(path.read_text())
        if not isinstance(trace, dict) or "events" not in trace:
            continue
        for e in trace["events"]:
            body = (e.get("response") or {}).get("json") if e["kind"] == "http" else None
            if not e["kind"] == "http" or not e["request"]["path"].startswith("/history/"):
                continue
            for prompt_id, entry in (body or {}).items():
                if history.outcome(entry).kind == history.SUCCESS:
                    yield path.stem, prompt_id, entry


def test_a_prompts_frames_tell_its_end_as_its_recorded_history_does() -> None:
    """Every successful prompt of the traces, followed from its frames alone (one socket life),
    ends with the outcome and the outputs its recorded history entry holds, so the endpoint
    need not read /history when it saw every frame."""
    checked = 0
    for trace, prompt_id, entry in recorded_histories():
        item = InflightPrompt("t", prompt_id)
        for e in text_frames(trace):
            frame = frames.parse(e["raw"])
            if getattr(frame, "prompt_id", None) != prompt_id:
                continue
            if isinstance(frame, frames.Started):
                item.on_started(socket_life=0)
            elif isinstance(frame, frames.Executed):
                item.on_executed(0, frame.node, frame.output)
            elif isinstance(frame, frames.Succeeded):
                item.on_succeeded(0)
        if item.frames_from is None:
            continue  # its client was not connected (trace k): no frames to follow
        found = item.outcome_from_frames(0)
        assert found is not None, (trace, prompt_id)
        outcome, seen_entry = found
        assert outcome == history.outcome(entry), (trace, prompt_id)
        assert seen_entry["outputs"] == entry["outputs"], (trace, prompt_id)
        checked += 1
    assert checked >= 5


def test_frames_from_another_socket_life_are_not_trusted() -> None:
    """A reconnect between a prompt's start and its end may have dropped frames (ComfyUI
    replays none): its history entry must be read."""
    item = InflightPrompt("t", "p")
    item.on_started(socket_life=0)
    item.on_executed(1, "2", {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]})
    item.on_succeeded(1)
    assert item.outcome_from_frames(1) is None and item.outputs == {}
    never_started = InflightPrompt("t", "q")
    never_started.on_succeeded(0)
    assert never_started.outcome_from_frames(0) is None
