"""The stand-in's routes that describe the server: system stats, features, the node and model
catalogue, and what the front end asks for at start (extensions, settings, users, the page)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from . import model_folders, responses

if TYPE_CHECKING:
    from .server import StandIn

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
MODEL_FOLDERS = model_folders.MODEL_FOLDERS
_INDEX_HTML = (
    '<!doctype html><html lang="en"><head><meta charset="UTF-8"><title>ComfyUI</title>'
    "</head><body>comfy_standin: a stand-in for ComfyUI " + COMFYUI_VERSION + "</body></html>"
)


class InfoRoutes:
    """Handlers bound to one ``StandIn`` (its folders, address and catalogue)."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin

    async def system_stats(self, request: web.Request) -> web.Response:
        try:
            ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            ram_total = ram_free = 0
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "2.14.1+cu130",
                    "embedded_python": False,
                    "argv": self._argv(),
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram_total,
                        "vram_free": ram_free,
                        "torch_vram_total": ram_total,
                        "torch_vram_free": ram_free,
                    }
                ],
            }
        )

    def _argv(self) -> list[str]:
        # The command line a real server with these folders would show (17 items, as recorded).
        user = os.path.join(os.path.dirname(self.s.dirs.temp), "user")
        return [
            "main.py",
            "--cpu",
            "--listen",
            self.s.host,
            "--port",
            str(self.s.port),
            "--disable-auto-launch",
            "--input-directory",
            self.s.dirs.input,
            "--output-directory",
            self.s.dirs.output,
            "--temp-directory",
            os.path.dirname(self.s.dirs.temp),
            "--user-directory",
            user,
            "--database-url",
            f"sqlite:///{user}/comfyui.db",
        ]

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(FEATURES)

    async def object_info(self, request: web.Request) -> web.Response:
        self.s.model_folders.refresh()
        return web.json_response(self.s.catalogue.object_info(Path(self.s.dirs.input)))

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        self.s.model_folders.refresh()
        info = self.s.catalogue.object_info(Path(self.s.dirs.input))
        return web.json_response({name: info[name]} if name in info else {})

    async def embeddings(self, request: web.Request) -> web.Response:
        self.s.model_folders.refresh()
        names = self.s.catalogue.model_files("embeddings") or []
        return web.json_response([os.path.splitext(n)[0] for n in names])

    async def models_list(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return responses.empty(404)
        self.s.model_folders.refresh()
        return web.json_response(self.s.catalogue.model_files(folder) or [])

    async def view_metadata(self, request: web.Request) -> web.Response:
        return responses.empty(404)  # no real safetensors files behind the configured names

    async def extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def settings(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def users(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": True})

    async def index(self, request: web.Request) -> web.Response:
        # bytes, so the Content-Type stays the recorded bare "text/html"
        return web.Response(
            body=_INDEX_HTML.encode(),
            content_type="text/html",
            headers={"Cache-Control": "no-cache"},
        )
