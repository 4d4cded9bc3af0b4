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

VERSION = 1
FOLDER_TYPES = ("input", "output", "temp")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_handlers(folder_of: Callable[[str], str | os.PathLike[str]]) -> tuple[Handler, Handler]:
    """``delete`` (POST JSON ``{type, filename, subfolder}``) and ``info`` (GET) handlers.

    delete: 200 ``{"deleted": true}``; 404 ``{"error"}`` when there is no such file; 400
    ``{"error"}`` for a bad body, a missing or unknown type or a name that
    ``paths.resolve_inside`` refuses. ``subfolder`` may be absent or null (the folder itself).
    """

    async def delete(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return _refuse(400, "body must be a JSON object")
        if not isinstance(body, dict):
            return _refuse(400, "body must be a JSON object")
        kind = body.get("type")
        if kind not in FOLDER_TYPES:
            return _refuse(400, "type must be one of input, output, temp")
        subfolder = body.get("subfolder")
        try:
            target = paths.resolve_inside(
                Path(folder_of(kind)), "" if subfolder is None else subfolder,
                body.get("filename", ""))
        except ValueError as exc:
            return _refuse(400, str(exc))
        if not os.path.exists(target):  # also a dangling symlink: there is no file to delete
            return _refuse(404, "file not found")
        try:
            os.unlink(target)  # never follows a final symlink: the named entry goes
        except FileNotFoundError:
            return _refuse(404, "file not found")
        except IsADirectoryError:
            return _refuse(400, "path is a folder")
        paths.prune_empty_parents(Path(folder_of(kind)), Path(target))
        return web.json_response({"deleted": True})

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    return delete, info
