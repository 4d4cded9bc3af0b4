"""ComfyUI websocket frames: one raw frame (text or bytes) → one typed frame, parsed once.

Pure: no I/O. `parse(raw)` never raises; a frame that is not what the protocol says becomes
`Unreadable`, a frame of a type we do not act on becomes `Other`. The types we act on:

- `status` (broadcast): ComfyUI's queue count → `Status`;
- `execution_start` → `Started`;
- `progress` → `Progress` (only with integer `value` and `max`);
- `execution_error` / `execution_interrupted` → `Failed` (the task's error fields already
  read by `history.error_from_message`, and the history outcome kind);
- `executing` with `node: null` → `Done` (history is complete by then); with a node → `Other`;
- binary frames (previews, SaveImageWebsocket images) → `Binary` with their event type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from comfy_fleet.comfy import history


@dataclass(frozen=True)
class Status:
    #: ComfyUI's queue length (every client's prompts), None when the frame has no integer count
    queue_remaining: int | None


@dataclass(frozen=True)
class Started:
    prompt_id: str


@dataclass(frozen=True)
class Progress:
    prompt_id: str
    value: int
    max: int
    node: str | None


@dataclass(frozen=True)
class Failed:
    prompt_id: str
    #: history.ERROR or history.INTERRUPTED
    kind: str
    #: the task's error fields (code, message, node_id, node_type, details)
    error: dict[str, Any]

    def outcome(self) -> history.Outcome:
        return history.Outcome(self.kind, [], self.error)


@dataclass(frozen=True)
class Done:
    """`executing` with `node: null`: the prompt finished; its history entry is written."""

    prompt_id: str


@dataclass(frozen=True)
class Other:
    """A well-formed text frame we do not act on (it still proves the socket is alive)."""

    type: str | None
    prompt_id: str | None


@dataclass(frozen=True)
class Binary:
    #: the first big-endian 32-bit word (1: image, 4: image with metadata), None if too short
    event_type: int | None
    length: int


@dataclass(frozen=True)
class Unreadable:
    """Text that is not a JSON object: ignored (the reconciler reads /queue and /history)."""


Frame = Status | Started | Progress | Failed | Done | Other | Binary | Unreadable

#: frame types that may name a prompt (`prompt_id`); the rest is broadcast or unreadable
ABOUT_A_PROMPT = (Started, Progress, Failed, Done, Other)


def parse(raw: str | bytes) -> Frame:
    """Read one websocket message as the server sent it (str for text, bytes for binary)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        event_type = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        return Binary(event_type=event_type, length=len(data))
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Unreadable()
    if not isinstance(frame, dict):
        return Unreadable()
    kind = frame.get("type")
    data = frame.get("data") or {}
    if not isinstance(data, dict):
        return Unreadable()
    if kind == "status":
        status = data.get("status")
        exec_info = status.get("exec_info") if isinstance(status, dict) else None
        remaining = exec_info.get("queue_remaining") if isinstance(exec_info, dict) else None
        return Status(remaining if isinstance(remaining, int) else None)
    prompt_id = data.get("prompt_id")
    if not isinstance(prompt_id, str):
        return Other(kind if isinstance(kind, str) else None, None)
    if kind == "execution_start":
        return Started(prompt_id)
    if kind == "progress":
        value, maximum, node = data.get("value"), data.get("max"), data.get("node")
        if isinstance(value, int) and isinstance(maximum, int):
            return Progress(prompt_id, value, maximum, None if node is None else str(node))
        return Other(kind, prompt_id)
    if kind == "execution_error":
        return Failed(prompt_id, history.ERROR, history.error_from_message(kind, data))
    if kind == "execution_interrupted":
        return Failed(prompt_id, history.INTERRUPTED, history.error_from_message(kind, data))
    if kind == "executing" and data.get("node") is None:
        return Done(prompt_id)
    return Other(kind if isinstance(kind, str) else None, prompt_id)
