"""The stand-in's file routes: ComfyUI's ``/view`` and ``/upload/image``, and the comfy-fleet
cleanup extension's routes (``/comfy-fleet/cleanup/*``) it hosts, over the instance's folders."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from PIL import Image

from comfyui_extension.comfy_fleet_cleanup.handlers import delete_batch
from comfyui_extension.comfy_fleet_cleanup.handlers import VERSION as CLEANUP_VERSION
from comfyui_extension.comfy_fleet_cleanup.paths import prune_empty_parents

from . import files, responses

if TYPE_CHECKING:
    from .server import StandIn


class FileRoutes:
    """Handlers bound to one ``StandIn`` (its folders, knobs and counters)."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin

    async def view(self, request: web.Request) -> web.StreamResponse:
        self.s.counters.views += 1
        if self.s.knobs.view_delay > 0:
            await asyncio.sleep(self.s.knobs.view_delay)
        query = dict(request.rel_url.query)
        target = files.resolve_view(self.s.dirs, query)
        if target.status != 200:
            return responses.empty(target.status)
        disposition = {"Content-Disposition": f'filename="{target.filename}"'}
        channel = query.get("channel", "rgba")
        if "preview" in query:
            info = query["preview"].split(";")
            fmt = info[0]
            if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                fmt = "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            with Image.open(target.path) as img:
                out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
                buf = BytesIO()
                out.save(buf, format=fmt, quality=quality)
            return web.Response(
                body=buf.getvalue(), content_type=f"image/{fmt}", headers=disposition
            )
        if channel in ("rgb", "a"):
            with Image.open(target.path) as img:
                if channel == "rgb":
                    if img.mode == "RGBA":
                        out = Image.merge("RGB", img.split()[:3])
                    else:
                        out = img.convert("RGB")
                else:
                    alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
                    out = Image.new("RGBA", img.size)
                    out.putalpha(alpha)
                buf = BytesIO()
                out.save(buf, format="PNG")
            return web.Response(body=buf.getvalue(), content_type="image/png", headers=disposition)
        ctype = mimetypes.guess_type(target.filename)[0] or "application/octet-stream"
        if ctype in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            ctype = "application/octet-stream"
        return web.FileResponse(target.path, headers={**disposition, "Content-Type": ctype})

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or image.file is None:
            return responses.empty(400)
        kind = post.get("type")
        if kind is not None and kind not in ("input", "temp", "output"):
            return responses.internal_error()
        subfolder = str(post.get("subfolder", ""))
        overwrite = post.get("overwrite")
        data = image.file.read()
        try:
            name, kind_out, _ = files.store_upload(
                self.s.dirs,
                data,
                image.filename,
                subfolder,
                str(kind) if kind is not None else None,
                str(overwrite) if overwrite is not None else None,
            )
        except files.UploadRejected:
            return responses.empty(400)
        self.s.counters.uploads += 1
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind_out})

    # the comfy-fleet cleanup extension ------------------------------------------------------
    async def cleanup_info(self, request: web.Request) -> web.Response:
        if not self.s.knobs.cleanup_extension:
            return responses.empty(404)
        return web.json_response({"version": min(CLEANUP_VERSION, self.s.knobs.cleanup_extension_version)})

    async def cleanup_delete(self, request: web.Request) -> web.Response:
        """The extension's delete route: one file, or a batch ``{"files": [...]}`` (version 2)."""
        if not self.s.knobs.cleanup_extension:
            return responses.empty(404)
        self.s.counters.cleanup_requests += 1
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if isinstance(body, dict) and "files" in body and self.s.knobs.cleanup_extension_version >= 2:
            status, answer = delete_batch(body["files"], self._cleanup_one)
        else:
            status, answer = self._cleanup_one(body)
        return web.json_response(answer, status=status)

    def _cleanup_one(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        try:
            target = files.cleanup_target(
                self.s.dirs, body.get("type"), body.get("filename"), body.get("subfolder", "")
            )
            target.unlink()
            prune_empty_parents(Path(self.s.dirs.by_type(body.get("type")) or ""), target)
        except files.CleanupError as err:
            return err.status, {"error": err.args[1]}
        except FileNotFoundError:
            return 404, {"error": "no such file"}
        self.s.counters.files_deleted += 1
        return 200, {"deleted": True}
