"""The command's parameter syntax: `-p name=value` and `--sweep name=v1,v2`. Pure but for
reading the image files a parameter names.

A value is parsed as JSON when it parses (`-p width=64`, `-p flag=true`, `-p 'x=[1,2]'`), else
kept as text; a parameter whose schema is a plain string is always kept as text. An image
parameter (by the workflow's JSON Schema) may name a local file: it is sent as a base64 data:
URL. http(s) and data: URLs, and base64 text, go as they are.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path
from typing import Any

from comfy_fleet_client import models

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
]


class UsageError(Exception):
    """A command line the command cannot act on (exit status 2)."""


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"{flag} {text!r}: expected name=value")
    return name, value


def parse_value(raw: str, schema: dict[str, Any] | None) -> Any:
    if schema is not None and schema.get("type") == "string" and "oneOf" not in schema:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def content_type(path: Path, head: bytes) -> str:
    for magic, media in _MAGIC:
        if head.startswith(magic):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def image_value(name: str, raw: str) -> str:
    """What to send for image parameter `name` given `raw` on the command line."""
    if raw.startswith(("http://", "https://", "data:")):
        return raw
    path = Path(raw).expanduser()
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"image parameter {name!r}: cannot read {raw!r}: {exc.strerror}") from None
        media = content_type(path, data[:16])
        return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
    if "/" in raw or "\\" in raw or path.suffix.lower() in _IMAGE_SUFFIXES:
        raise UsageError(f"image parameter {name!r}: no file {raw!r}")
    return raw  # base64 text, as the service takes it


def param_value(name: str, raw: str, workflow: models.Workflow | None) -> Any:
    if workflow is not None and workflow.is_image_param(name):
        return image_value(name, raw)
    return parse_value(raw, workflow.param_schema(name) if workflow else None)


def build_params(assignments: list[str], workflow: models.Workflow | None) -> dict[str, Any]:
    """The `params` object of `-p name=value …` (a later name wins)."""
    params: dict[str, Any] = {}
    for text in assignments:
        name, raw = split_assignment(text, "-p")
        params[name] = param_value(name, raw, workflow)
    return params


def build_sweep(assignments: list[str], workflow: models.Workflow | None) -> dict[str, list[Any]]:
    """`--sweep name=v1,v2 …` → {name: [v1, v2]}, in the order given. A JSON list
    (`--sweep 'text=["a, b","c"]'`) gives values that contain commas."""
    sweep: dict[str, list[Any]] = {}
    for text in assignments:
        name, raw = split_assignment(text, "--sweep")
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            values = [v if not isinstance(v, str) else param_value(name, v, workflow) for v in parsed]
        else:
            values = [param_value(name, part, workflow) for part in raw.split(",")]
        if not values or (len(values) == 1 and values[0] == ""):
            raise UsageError(f"--sweep {text!r}: no values")
        sweep[name] = values
    return sweep
