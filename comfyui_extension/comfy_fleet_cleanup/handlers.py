"""The aiohttp handlers of the cleanup routes, independent of ComfyUI.

``make_handlers(folder_of)`` takes a function from ``"input" | "output" | "temp"`` to that folder
and returns ``(delete, info)``. ComfyUI wires them to ``folder_paths``; the stand-in to its dirs.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import paths

#: 2: the delete route also takes a batch, ``{"files": [...]}``.
VERSION = 2
#: The most files one batch may name.
MAX_BATCH = 1000
FOLDER_TYPES = ("input", "output", "temp")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def delete_batch(
    batch: Any, delete_one: Callable[[Any], tuple[int, dict[str, Any]]]
) -> tuple[int, dict[str, Any]]:
    """The answer to a batch body's ``files``: each entry through ``delete_one`` (which answers
    as the one-file form: status, JSON), in order; 400 unless a list of 1 to MAX_BATCH."""
    if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
        return 400, {"error": f"files must be a list of 1 to {MAX_BATCH} files"}
    results = []
    for entry in batch:
        status, answer = delete_one(entry)
        results.append(answer if status == 200 else {"status": status, **answer})
    return 200, {"results": results}


def make_handlers(folder_of: Callable[[str], str | os.PathLike[str]]) -> tuple[Handler, Handler]:
    """``delete`` (POST JSON) and ``info`` (GET) handlers.

    delete, one file ``{type, filename, subfolder}``: 200 ``{"deleted": true}``; 404
    ``{"error"}`` when there is no such file; 400 ``{"error"}`` for a bad body, a missing or
    unknown type or a name that ``paths.resolve_inside`` refuses. ``subfolder`` may be absent or
    null (the folder itself).
    delete, a batch ``{"files": [{type, filename, subfolder}, ...]}`` (1 to MAX_BATCH): 200
    ``{"results": [...]}``, one per file in order, each ``{"deleted": true}`` or ``{"status":
    404 | 400, "error"}`` as the one-file form would answer; 400 when ``files`` is not such a list.
    """

    def delete_one(body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        kind = body.get("type")
        if kind not in FOLDER_TYPES:
            return 400, {"error": "type must be one of input, output, temp"}
        subfolder = body.get("subfolder")
        try:
            target = paths.resolve_inside(
                Path(folder_of(kind)), "" if subfolder is None else subfolder,
                body.get("filename", ""))
        except ValueError as exc:
            return 400, {"error": str(exc)}
        if not os.path.exists(target):  # also a dangling symlink: there is no file to delete
            return 404, {"error": "file not found"}
        try:
            # By directory descriptors, following no symlink: a folder swapped for a symlink
            # since the check above cannot lead outside. A final symlink goes, not its target.
            paths.unlink_inside(Path(folder_of(kind)), target)
        except paths.Escaped as exc:
            return 400, {"error": str(exc)}
        except FileNotFoundError:
            return 404, {"error": "file not found"}
        except IsADirectoryError:
            return 400, {"error": "path is a folder"}
        paths.prune_empty_parents(Path(folder_of(kind)), Path(target))
        return 200, {"deleted": True}

    async def delete(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return _refuse(400, "body must be a JSON object")
        if isinstance(body, dict) and "files" in body:
            status, answer = delete_batch(body["files"], delete_one)
        else:
            status, answer = delete_one(body)
        return web.json_response(answer, status=status)

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    return delete, info
