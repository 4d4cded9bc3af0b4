"""Reading ComfyUI's answers: a history entry (or the websocket frames) → what happened.

Pure functions: `outcome(entry)` decides success / error / interrupted from a `/history/{id}`
entry (its `status.messages` hold the execution_error or execution_interrupted payload), and
`output_files(outputs)` lists every reported file of type `output`, in node order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUCCESS, ERROR, INTERRUPTED, UNKNOWN = "success", "error", "interrupted", "unknown"

#: error codes of failed tasks
CODE_EXECUTION = "comfyui_execution_error"
CODE_INTERRUPTED = "comfyui_interrupted"
CODE_REJECTED = "comfyui_prompt_rejected"


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    kind: str  # the output dict key: images, gifs, video, audio, ...
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class Outcome:
    kind: str
    files: list[OutputFile] = field(default_factory=list)
    error: dict[str, Any] | None = None


def output_files(outputs: dict[str, Any] | None) -> list[OutputFile]:
    """Every `{filename, subfolder, type: "output"}` entry of a history `outputs` dict (or the
    same dict gathered from `executed` frames), in node order; temp previews are skipped."""
    files: list[OutputFile] = []
    for node_id, ui in (outputs or {}).items():
        if not isinstance(ui, dict):
            continue
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if (
                    isinstance(item, dict)
                    and isinstance(item.get("filename"), str)
                    and item.get("type", "output") == "output"
                ):
                    files.append(
                        OutputFile(
                            node_id=str(node_id),
                            kind=str(kind),
                            filename=item["filename"],
                            subfolder=str(item.get("subfolder") or ""),
                            type="output",
                        )
                    )
    return files


def all_files(outputs: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """Every file a history `outputs` dict names, of any type: (type, subfolder, filename)."""
    found: list[tuple[str, str, str]] = []
    for ui in (outputs or {}).values():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    found.append(
                        (str(item.get("type") or "output"), str(item.get("subfolder") or ""), item["filename"])
                    )
    return found


def error_from_message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An execution_error / execution_interrupted payload → the task's error fields."""
    if kind == "execution_interrupted":
        return {
            "code": CODE_INTERRUPTED,
            "message": f"interrupted at node {data.get('node_id')} ({data.get('node_type')})",
            "node_id": _str_or_none(data.get("node_id")),
            "node_type": _str_or_none(data.get("node_type")),
            "details": None,
        }
    message = str(data.get("exception_message") or "execution failed").strip()
    return {
        "code": CODE_EXECUTION,
        "message": message,
        "node_id": _str_or_none(data.get("node_id")),
        "node_type": _str_or_none(data.get("node_type")),
        "details": {
            "exception_type": data.get("exception_type"),
            # The last lines of the traceback say where; the whole of it can be huge.
            "traceback": list(data.get("traceback") or [])[-8:],
        },
    }


def outcome(entry: dict[str, Any] | None) -> Outcome:
    """Decide what a history entry says. `UNKNOWN` when it is missing or not yet complete."""
    if not entry:
        return Outcome(UNKNOWN)
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    for msg in reversed(messages):
        if isinstance(msg, list) and len(msg) == 2 and msg[0] in (
            "execution_error",
            "execution_interrupted",
        ):
            kind = ERROR if msg[0] == "execution_error" else INTERRUPTED
            return Outcome(kind, output_files(entry.get("outputs")), error_from_message(msg[0], msg[1]))
    status_str = status.get("status_str")
    if status_str == "success" or (status_str is None and status.get("completed")):
        return Outcome(SUCCESS, output_files(entry.get("outputs")))
    if status_str == "error":
        return Outcome(ERROR, [], {"code": CODE_EXECUTION, "message": "ComfyUI reported an error"})
    return Outcome(UNKNOWN)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
