"""The stand-in ComfyUI server: aiohttp routes of ComfyUI 0.3.64 (each also under ``/api``),
the comfy-fleet extension's routes (cleanup; models through ``model_folders``), and the
``/_standin/*`` control routes that the real server does not have.

``StandIn`` owns one instance: its folders, catalogue, knobs and counters survive
``restart()``; its queue, history, sockets, cache and prompt counter do not (as with a real
restart). Temp files are wiped at every start, as the real server does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import mimetypes
import os
import sys
import urllib.parse
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from comfyui_extension.comfy_fleet_cleanup.handlers import delete_batch
from comfyui_extension.comfy_fleet_cleanup.handlers import VERSION as CLEANUP_VERSION
from comfyui_extension.comfy_fleet_cleanup.paths import prune_empty_parents

from . import files, model_folders
from .executor import Executor
from .hub import Hub
from .knobs import Counters, Knobs
from .prompt_queue import PromptQueue
from .validation import Catalogue, PromptCrashed, validate_prompt

log = logging.getLogger(__name__)

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
MODEL_FOLDERS = model_folders.MODEL_FOLDERS
_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
_INDEX_HTML = (
    '<!doctype html><html lang="en"><head><meta charset="UTF-8"><title>ComfyUI</title>'
    "</head><body>comfy_standin: a stand-in for ComfyUI " + COMFYUI_VERSION + "</body></html>"
)


def _empty(status: int = 200) -> web.Response:
    return web.Response(status=status)


def _internal_error() -> web.Response:
    return web.Response(status=500, text=_INTERNAL_ERROR, content_type="text/plain")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Runtime:
    """What a restart throws away: queue, history, sockets, cache, prompt counter."""

    def __init__(self, standin: StandIn) -> None:
        self.hub = Hub(paused=lambda: standin.knobs.hang)
        self.queue = PromptQueue(self._queue_updated)
        self.executor = Executor(
            self.queue, self.hub, standin.dirs, standin.catalogue, standin.knobs, standin.counters
        )
        self.number = 0

    def _queue_updated(self) -> None:
        self.hub.send("status", {"status": self.queue_info()}, None)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.queue_remaining()}}


class StandIn:
    """One stand-in ComfyUI instance on 127.0.0.1."""

    def __init__(
        self,
        *,
        input_dir: Path,
        output_dir: Path,
        temp_dir: Path,
        models: dict[str, list[str]] | None = None,
        knobs: Knobs | None = None,
        host: str = "127.0.0.1",
        models_dir: Path | None = None,
    ) -> None:
        """``models`` are names the loaders list with no file behind them; ``models_dir``
        (default: ``<temp_dir>-models``) holds the model folders the extension pulls into."""
        self.dirs = files.Dirs.create(Path(input_dir), Path(output_dir), Path(temp_dir))
        self.models = {k: list(v) for k, v in (models or {}).items()}
        self.knobs = knobs or Knobs()
        self.counters = Counters()
        temp = Path(os.path.abspath(temp_dir))
        self.model_folders = model_folders.ModelFolders(
            Path(models_dir) if models_dir else temp.with_name(temp.name + "-models"),
            self.models, self.knobs, self.counters, self._queued_prompts, self._set_catalogue)
        self.catalogue = self.model_folders.catalogue()
        self.host = host
        self.port = 0
        self.rt: _Runtime | None = None
        self._runner: web.AppRunner | None = None
        self._restart_task: asyncio.Task[None] | None = None

    def _queued_prompts(self) -> list[Any]:
        if self.rt is None:
            return []
        running, pending = self.rt.queue.get_current_queue()
        return [item[2] for item in [*running, *pending]]

    def _set_catalogue(self, catalogue: Catalogue) -> None:
        """A model folder changed: the loaders list its files from now on, as the real
        server's do once its file-list cache sees the change."""
        self.catalogue = catalogue
        if self.rt is not None:
            self.rt.executor.catalogue = catalogue

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, port: int = 0) -> None:
        """Bind (``port=0``: a free port, kept for later restarts) and start serving."""
        self.dirs.wipe_temp()
        self.rt = _Runtime(self)
        self.rt.hub.start()
        self.rt.executor.start()
        app = web.Application(
            middlewares=[self._hang_middleware, self._origin_middleware],
            client_max_size=MAX_UPLOAD_SIZE,
        )
        self._add_routes(app)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.25
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port or self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close sockets and the listener; the process' state is gone."""
        rt, self.rt = self.rt, None
        if rt is not None:
            await rt.executor.stop()
            await rt.hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_s: float = 0.0) -> None:
        """Exit and come back on the same port: queue and history gone, files kept."""
        await self.stop()
        if down_s > 0:
            await asyncio.sleep(down_s)
        self.counters.restarts += 1
        await self.start(self.port)

    def drop_websockets(self) -> None:
        """Cut every websocket's connection (no close frame), as a network drop would."""
        if self.rt is not None:
            self.rt.hub.drop_all()

    # -- middlewares -----------------------------------------------------------------------------
    @web.middleware
    async def _hang_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.knobs.hang and not request.path.startswith("/_standin/"):
            while self.knobs.hang:  # noqa: ASYNC110 - the knob is a plain attribute
                await asyncio.sleep(0.05)
        return await handler(request)

    @web.middleware
    async def _origin_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        origin = request.headers.get("Origin")
        if host and origin:
            host_domain = host.lower()
            parsed = urllib.parse.urlparse(origin)
            origin_domain: str | None = parsed.netloc.lower()
            host_parsed = urllib.parse.urlsplit("//" + host_domain)
            loopback = _is_loopback(host_parsed.hostname)
            host_cmp: str | None = host_domain
            if parsed.port is None:
                host_cmp = host_parsed.hostname
            if host_parsed.port is None:
                origin_domain = parsed.hostname
            if loopback and host_cmp and origin_domain and host_cmp != origin_domain:
                return _empty(403)
        return await handler(request)

    # -- routes ----------------------------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self.websocket),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_node),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.models_list),
            ("GET", "/models/{folder}", self.models_folder),
            ("GET", "/view_metadata/{folder_name}", self.view_metadata),
            ("GET", "/extensions", self.extensions),
            ("GET", "/settings", self.settings),
            ("GET", "/users", self.users),
            ("POST", "/comfy-fleet/cleanup/delete", self.cleanup_delete),
            ("GET", "/comfy-fleet/cleanup/info", self.cleanup_info),
            ("POST", "/comfy-fleet/models/pull", self.model_folders.pull),
            ("GET", "/comfy-fleet/models", self.model_folders.listing),
            ("GET", "/comfy-fleet/models/info", self.model_folders.info),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        app.router.add_get("/", self.index)
        app.router.add_get("/_standin/knobs", self.control_get_knobs)
        app.router.add_post("/_standin/knobs", self.control_set_knobs)
        app.router.add_get("/_standin/counters", self.control_counters)
        app.router.add_post("/_standin/drop_websockets", self.control_drop_websockets)
        app.router.add_post("/_standin/restart", self.control_restart)

    @property
    def _rt(self) -> _Runtime:
        assert self.rt is not None
        return self.rt

    # websocket ------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.knobs.refuse_websockets:
            return _empty(503)
        rt = self._rt
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.counters.ws_connects += 1
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            rt.hub.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        rt.hub.sockets[sid] = ws
        rt.hub.flags[sid] = {}
        try:
            rt.hub.send("status", {"status": rt.queue_info(), "sid": sid}, sid)
            ex = rt.executor
            if ex.client_id == sid and ex.last_node_id is not None:
                rt.hub.send("executing", {"node": ex.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            client_flags = data.get("data", {})
                            if not isinstance(client_flags, dict):
                                client_flags = {}
                            rt.hub.flags[sid] = client_flags
                            rt.hub.send("feature_flags", FEATURES, sid)
                    except ValueError:
                        pass
                    first = False
        finally:
            # As the real server: this may unregister a newer socket of the same clientId.
            rt.hub.sockets.pop(sid, None)
            rt.hub.flags.pop(sid, None)
        return ws

    # prompts --------------------------------------------------------------------------------
    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._rt.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        rt = self._rt
        try:
            body = json.loads(await request.text())
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
            if "number" in body:
                number: float | int = float(body["number"])
            else:
                number = rt.number
                if body.get("front"):
                    number = -number
                rt.number += 1
        except (ValueError, TypeError):
            return _internal_error()
        if "prompt" not in body:
            self.counters.prompts_rejected += 1
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body["prompt_id"]) if "prompt_id" in body else str(uuid.uuid4())
        try:
            result = validate_prompt(
                prompt,
                self.catalogue,
                Path(self.dirs.input),
                output_dir=Path(self.dirs.output),
                temp_dir=Path(self.dirs.temp),
                partial_execution_targets=body.get("partial_execution_targets"),
            )
        except PromptCrashed:
            return _internal_error()
        extra_data = body.get("extra_data", {})
        extra_data = dict(extra_data) if isinstance(extra_data, dict) else {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            self.counters.prompts_rejected += 1
            return web.json_response(result.error_body, status=400)
        self.counters.prompts_accepted += 1
        if self.knobs.lose_next_prompts > 0:
            self.knobs.lose_next_prompts -= 1
            self.counters.prompts_lost += 1
        else:
            rt.queue.put([number, prompt_id, prompt, extra_data, result.outputs_to_execute])
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self._rt.queue.get_current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _internal_error()
        q = self._rt.queue
        if isinstance(body, dict):
            if body.get("clear"):
                q.wipe()
            for pid in body.get("delete", []) or []:
                q.delete(pid)
        return _empty()

    async def post_interrupt(self, request: web.Request) -> web.Response:
        self.counters.interrupts += 1
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        ex = self._rt.executor
        if prompt_id:
            running, _ = self._rt.queue.get_current_queue()
            if any(item[1] == prompt_id for item in running):
                ex.interrupt()
        else:
            ex.interrupt()
        return _empty()

    async def post_free(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _internal_error()
        if isinstance(body, dict) and body.get("free_memory"):
            ex = self._rt.executor
            if ex.running_prompt_id is None:
                ex.cache.clear()
            else:
                ex.free_memory_requested = True
        return _empty()

    # history --------------------------------------------------------------------------------
    async def get_history(self, request: web.Request) -> web.Response:
        q = request.rel_url.query
        try:
            max_items = int(q["max_items"]) if "max_items" in q else None
            offset = int(q["offset"]) if "offset" in q else -1
        except ValueError:
            return _internal_error()
        return web.json_response(self._rt.queue.get_history(max_items=max_items, offset=offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        return web.json_response(self._rt.queue.get_history(request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _internal_error()
        q = self._rt.queue
        if isinstance(body, dict):
            if body.get("clear"):
                q.wipe_history()
            for pid in body.get("delete", []) or []:
                q.delete_history(pid)
        return _empty()

    # files ----------------------------------------------------------------------------------
    async def view(self, request: web.Request) -> web.StreamResponse:
        self.counters.views += 1
        if self.knobs.view_delay > 0:
            await asyncio.sleep(self.knobs.view_delay)
        query = dict(request.rel_url.query)
        target = files.resolve_view(self.dirs, query)
        if target.status != 200:
            return _empty(target.status)
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
            return _empty(400)
        kind = post.get("type")
        if kind is not None and kind not in ("input", "temp", "output"):
            return _internal_error()
        subfolder = str(post.get("subfolder", ""))
        overwrite = post.get("overwrite")
        data = image.file.read()
        try:
            name, kind_out, _ = files.store_upload(
                self.dirs,
                data,
                image.filename,
                subfolder,
                str(kind) if kind is not None else None,
                str(overwrite) if overwrite is not None else None,
            )
        except files.UploadRejected:
            return _empty(400)
        self.counters.uploads += 1
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind_out})

    # catalogue and info ---------------------------------------------------------------------
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
        user = os.path.join(os.path.dirname(self.dirs.temp), "user")
        return [
            "main.py",
            "--cpu",
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--input-directory",
            self.dirs.input,
            "--output-directory",
            self.dirs.output,
            "--temp-directory",
            os.path.dirname(self.dirs.temp),
            "--user-directory",
            user,
            "--database-url",
            f"sqlite:///{user}/comfyui.db",
        ]

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(FEATURES)

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.catalogue.object_info(Path(self.dirs.input)))

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.catalogue.object_info(Path(self.dirs.input))
        return web.json_response({name: info[name]} if name in info else {})

    async def embeddings(self, request: web.Request) -> web.Response:
        names = self.catalogue.model_files("embeddings") or []
        return web.json_response([os.path.splitext(n)[0] for n in names])

    async def models_list(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return _empty(404)
        return web.json_response(self.catalogue.model_files(folder) or [])

    async def view_metadata(self, request: web.Request) -> web.Response:
        return _empty(404)  # no real safetensors files behind the configured names

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

    # the comfy-fleet cleanup extension -------------------------------------------------------
    async def cleanup_info(self, request: web.Request) -> web.Response:
        if not self.knobs.cleanup_extension:
            return _empty(404)
        return web.json_response({"version": min(CLEANUP_VERSION, self.knobs.cleanup_extension_version)})

    async def cleanup_delete(self, request: web.Request) -> web.Response:
        """The extension's delete route: one file, or a batch ``{"files": [...]}`` (version 2)."""
        if not self.knobs.cleanup_extension:
            return _empty(404)
        self.counters.cleanup_requests += 1
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if isinstance(body, dict) and "files" in body and self.knobs.cleanup_extension_version >= 2:
            status, answer = delete_batch(body["files"], self._cleanup_one)
        else:
            status, answer = self._cleanup_one(body)
        return web.json_response(answer, status=status)

    def _cleanup_one(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        try:
            target = files.cleanup_target(
                self.dirs, body.get("type"), body.get("filename"), body.get("subfolder", "")
            )
            target.unlink()
            prune_empty_parents(Path(self.dirs.by_type(body.get("type")) or ""), target)
        except files.CleanupError as err:
            return err.status, {"error": err.args[1]}
        except FileNotFoundError:
            return 404, {"error": "no such file"}
        self.counters.files_deleted += 1
        return 200, {"deleted": True}

    # control routes (not in the real server) --------------------------------------------------
    async def control_get_knobs(self, request: web.Request) -> web.Response:
        return web.json_response(self.knobs.to_json())

    async def control_set_knobs(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.knobs.update(body)
        except (ValueError, TypeError, KeyError) as ex:
            return web.json_response({"error": f"bad knobs: {ex!r}"}, status=400)
        if self.rt is not None:
            self.rt.queue.wake()
        return web.json_response(self.knobs.to_json())

    async def control_counters(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters.to_json())

    async def control_drop_websockets(self, request: web.Request) -> web.Response:
        self.drop_websockets()
        return web.json_response({"dropped": True})

    async def control_restart(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        down_s = float(body.get("down_s", 0.0)) if isinstance(body, dict) else 0.0

        async def later() -> None:
            await asyncio.sleep(0.05)  # let this answer go out first
            await self.restart(down_s)

        self._restart_task = asyncio.get_running_loop().create_task(later())
        return web.json_response({"restarting": True, "down_s": down_s})


__all__ = ["FEATURES", "StandIn"]
