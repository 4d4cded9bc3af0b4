"""The stand-in ComfyUI server: aiohttp routes of ComfyUI 0.3.64 (each also under ``/api``),
the comfy-fleet extension's routes (cleanup in ``file_routes``; models through
``model_folders``), and the ``/_standin/*`` control routes that the real server does not have
(``control_routes``). This module holds the instance, its route table, the websocket and the
prompt, queue and history routes; the file routes are in ``file_routes``, those that describe
the server in ``info_routes``, the middlewares in ``middlewares``.

``StandIn`` owns one instance: its folders, catalogue, knobs and counters survive
``restart()``; its queue, history, sockets, cache and prompt counter do not (as with a real
restart). Temp files are wiped at every start, as the real server does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from . import control_routes, file_routes, files, info_routes, middlewares, model_folders, responses
from .executor import Executor
from .hub import Hub
from .knobs import Counters, Knobs
from .prompt_queue import PromptQueue
from .validation import Catalogue, PromptCrashed, validate_prompt

log = logging.getLogger(__name__)

COMFYUI_VERSION = info_routes.COMFYUI_VERSION
MAX_UPLOAD_SIZE = info_routes.MAX_UPLOAD_SIZE
FEATURES = info_routes.FEATURES
MODEL_FOLDERS = info_routes.MODEL_FOLDERS


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
        self.file_routes = file_routes.FileRoutes(self)
        self.info_routes = info_routes.InfoRoutes(self)
        self.control_routes = control_routes.ControlRoutes(self)

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
            middlewares=[middlewares.hang(self.knobs), middlewares.origin_only],
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
            ("GET", "/view", self.file_routes.view),
            ("POST", "/upload/image", self.file_routes.upload_image),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/system_stats", self.info_routes.system_stats),
            ("GET", "/features", self.info_routes.features),
            ("GET", "/object_info", self.info_routes.object_info),
            ("GET", "/object_info/{node_class}", self.info_routes.object_info_node),
            ("GET", "/embeddings", self.info_routes.embeddings),
            ("GET", "/models", self.info_routes.models_list),
            ("GET", "/models/{folder}", self.info_routes.models_folder),
            ("GET", "/view_metadata/{folder_name}", self.info_routes.view_metadata),
            ("GET", "/extensions", self.info_routes.extensions),
            ("GET", "/settings", self.info_routes.settings),
            ("GET", "/users", self.info_routes.users),
            ("POST", "/comfy-fleet/cleanup/delete", self.file_routes.cleanup_delete),
            ("GET", "/comfy-fleet/cleanup/info", self.file_routes.cleanup_info),
            ("POST", "/comfy-fleet/models/pull", self.model_folders.pull),
            ("GET", "/comfy-fleet/models", self.model_folders.listing),
            ("GET", "/comfy-fleet/models/info", self.model_folders.info),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        app.router.add_get("/", self.info_routes.index)
        app.router.add_get("/_standin/knobs", self.control_routes.control_get_knobs)
        app.router.add_post("/_standin/knobs", self.control_routes.control_set_knobs)
        app.router.add_get("/_standin/counters", self.control_routes.control_counters)
        app.router.add_post("/_standin/drop_websockets", self.control_routes.control_drop_websockets)
        app.router.add_post("/_standin/restart", self.control_routes.control_restart)

    @property
    def _rt(self) -> _Runtime:
        assert self.rt is not None
        return self.rt

    # websocket ------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.knobs.refuse_websockets:
            return responses.empty(503)
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
            return responses.internal_error()
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
        self.model_folders.refresh()  # the loaders' lists as the real server reads them now
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
            return responses.internal_error()
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
            return responses.internal_error()
        q = self._rt.queue
        if isinstance(body, dict):
            if body.get("clear"):
                q.wipe()
            for pid in body.get("delete", []) or []:
                q.delete(pid)
        return responses.empty()

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
        return responses.empty()

    async def post_free(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return responses.internal_error()
        if isinstance(body, dict) and body.get("free_memory"):
            ex = self._rt.executor
            if ex.running_prompt_id is None:
                ex.cache.clear()
            else:
                ex.free_memory_requested = True
        return responses.empty()

    # history --------------------------------------------------------------------------------
    async def get_history(self, request: web.Request) -> web.Response:
        q = request.rel_url.query
        try:
            max_items = int(q["max_items"]) if "max_items" in q else None
            offset = int(q["offset"]) if "offset" in q else -1
        except ValueError:
            return responses.internal_error()
        return web.json_response(self._rt.queue.get_history(max_items=max_items, offset=offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        self.counters.history_reads += 1
        return web.json_response(self._rt.queue.get_history(request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return responses.internal_error()
        q = self._rt.queue
        if isinstance(body, dict):
            if body.get("clear"):
                q.wipe_history()
            for pid in body.get("delete", []) or []:
                q.delete_history(pid)
        return responses.empty()


__all__ = ["FEATURES", "StandIn"]
