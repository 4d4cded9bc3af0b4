"""ComfyUI websocket frames: one raw frame (text or bytes) → one typed frame, parsed once.

Pure: no I/O. `parse(raw)` never raises; a frame that is not what the protocol says becomes
`Unreadable`, a frame of a type we do not act on becomes `Other`. The types we act on:

- `status` (broadcast): ComfyUI's queue count → `Status`;
- `execution_start` → `Started`;
- `progress` → `Progress` (only with integer `value` and `max`);
- `execution_error` / `execution_interrupted` → `Failed` (the task's error fields already
  read by `history.error_from_message`, and the history outcome kind);
- `executed` → `Executed` (the node's UI output: the files it saved, as history records them);
- `execution_success` → `Succeeded`;
- `executing` with `node: null` → `Done` (history is complete by then); with a node → `Other`;
- binary preview frames (protocol §3.6) → `Preview`: type 1 (`PREVIEW_IMAGE`: a 4-byte image
  format, 1 JPEG or 2 PNG, then the image; it names no prompt: it is the running one's) and
  type 4 (`PREVIEW_IMAGE_WITH_METADATA`: a 4-byte length, that much JSON metadata naming the
  prompt and the image type, then the image); any other binary frame, or a preview frame that
  does not hold together, → `Binary` with its event type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class Executed:
    """`executed`: one node's UI output (`{"images": [...]}`…), None for a cached node without
    UI. History's `outputs` is these, keyed by node (a node run again replaces its entry)."""

    prompt_id: str
    node: str
    output: dict[str, Any] | None


@dataclass(frozen=True)
class Succeeded:
    """`execution_success`: the prompt ran to its end without an error."""

    prompt_id: str


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
class Preview:
    """A preview image of a running prompt (a sampler's latent preview, or an image that
    SaveImageWebsocket streams)."""

    #: the prompt it is of (type 4 names it); None for type 1: the prompt running then
    prompt_id: str | None
    #: "image/jpeg" or "image/png" (type 1), or what type 4's metadata says ("image/…")
    content_type: str
    image: bytes = field(repr=False)


@dataclass(frozen=True)
class Unreadable:
    """Text that is not a JSON object: ignored (the reconciler reads /queue and /history)."""


Frame = (
    Status | Started | Progress | Executed | Succeeded | Failed | Done | Other | Preview | Binary
    | Unreadable
)

#: binary event types (ComfyUI's `protocol.BinaryEventTypes`) and type 1's image formats
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}

#: frame types that may name a prompt (`prompt_id`); the rest is broadcast or unreadable
ABOUT_A_PROMPT = (Started, Progress, Executed, Succeeded, Failed, Done, Other)


def parse(raw: str | bytes) -> Frame:
    """Read one websocket message as the server sent it (str for text, bytes for binary)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return _binary(bytes(raw))
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
    if kind == "executed" and data.get("node") is not None:
        output = data.get("output")
        if output is None or isinstance(output, dict):
            return Executed(prompt_id, str(data["node"]), output)
        return Other(kind, prompt_id)
    if kind == "execution_success":
        return Succeeded(prompt_id)
    if kind == "executing" and data.get("node") is None:
        return Done(prompt_id)
    return Other(kind if isinstance(kind, str) else None, prompt_id)


def _binary(data: bytes) -> Preview | Binary:
    """A binary frame: a preview when it is one that holds together, else `Binary`."""
    if len(data) < 8:
        return Binary(int.from_bytes(data[:4], "big") if len(data) >= 4 else None, len(data))
    event_type, word = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
    if event_type == PREVIEW_IMAGE and word in IMAGE_FORMATS and len(data) > 8:
        return Preview(None, IMAGE_FORMATS[word], data[8:])
    if event_type == PREVIEW_IMAGE_WITH_METADATA and len(data) > 8 + word:
        try:
            meta = orjson.loads(data[8 : 8 + word])
        except orjson.JSONDecodeError:
            meta = None
        if isinstance(meta, dict):
            image_type, prompt_id = meta.get("image_type"), meta.get("prompt_id")
            if isinstance(image_type, str) and image_type.startswith("image/"):
                pid = prompt_id if isinstance(prompt_id, str) else None
                return Preview(pid, image_type, data[8 + word :])
    return Binary(event_type, len(data))
