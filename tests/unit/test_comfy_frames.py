"""The websocket frame parser, fed the frames the real ComfyUI sent (the recorded traces).
Pure, no I/O beyond reading the recordings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from comfy_fleet.comfy import frames, history
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
        else:
            assert frame == frames.Other(e["type"], data.get("prompt_id")), e["raw"]
    # The recordings hold every kind we act on.
    assert {frames.Status, frames.Started, frames.Progress, frames.Failed, frames.Done, frames.Other} <= seen


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


def test_binary_frames_give_their_event_type() -> None:
    binary = [e for e in received() if e["frame"] == "binary"]
    assert {e["event_type"] for e in binary} == {1, 4}
    for e in binary:
        # The recordings keep the first 8 bytes and the length, not the image.
        raw = bytes.fromhex(e["head_hex"]).ljust(e["length"], b"\0")
        assert frames.parse(raw) == frames.Binary(event_type=e["event_type"], length=e["length"])
    assert frames.parse(b"\0\0") == frames.Binary(event_type=None, length=2)


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
