"""The aiohttp handlers of the model routes, independent of ComfyUI.

``make_handlers(store, config)`` takes a ``ModelStore`` and a function returning the current
``model_rules.Config``, and returns ``(pull, listing, info)``. ComfyUI wires them to its
``folder_paths`` and prompt queue (``__init__.py``); the stand-in to its own folders and queue.
Every refusal answers ``{"error": {"code", "message", "details"}}`` (see README.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import model_rules, model_store, paths

#: 1: pull, list, info.
VERSION = 1

Handler = Callable[[web.Request], Awaitable[web.Response]]


def make_handlers(
    store: model_store.ModelStore, config: Callable[[], model_rules.Config]
) -> tuple[Handler, Handler, Handler]:
    """``pull`` (POST JSON), ``listing`` (GET) and ``info`` (GET) handlers."""

    def used(entries: list[Any]) -> int:
        return sum(e.size for e in entries)

    async def pull(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            error = model_rules.bad_request("body must be a JSON object")
            return web.json_response(error.body(), status=error.status)
        try:
            answer = await store.pull(body, config())
        except model_rules.ModelError as error:
            return web.json_response(error.body(), status=error.status)
        return web.json_response(answer)

    async def listing(request: web.Request) -> web.Response:
        entries = store.list()
        return web.json_response({
            "models": [e.public() for e in entries],
            "used_bytes": used(entries),
            "cache_bytes": config().cache_bytes,
        })

    async def info(request: web.Request) -> web.Response:
        cfg = config()
        problem = cfg.problem if paths.BY_FD else "pulling models needs Linux or macOS"
        return web.json_response({
            "version": VERSION,
            "configured": cfg.bucket is not None and paths.BY_FD,
            "bucket_url": cfg.bucket.url if cfg.bucket else None,
            "cache_bytes": cfg.cache_bytes,
            "used_bytes": used(store.list()),
            "problem": problem,
        })

    return pull, listing, info
