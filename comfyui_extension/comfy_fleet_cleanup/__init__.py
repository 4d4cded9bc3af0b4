"""comfy-fleet's extension for ComfyUI: delete one input, output or temp file by name, and pull
models from the fleet's bucket into the model folders within a disk budget.

Copy this folder into ComfyUI's ``custom_nodes/``. It adds no nodes; it registers
``POST /comfy-fleet/cleanup/delete``, ``GET /comfy-fleet/cleanup/info``,
``POST /comfy-fleet/models/pull``, ``GET /comfy-fleet/models`` and ``GET /comfy-fleet/models/info``
(ComfyUI also serves them under ``/api``). See README.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import handlers, model_handlers, model_rules, model_store, paths

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "handlers", "paths"]

#: The index of fetched models, in ComfyUI's models folder.
INDEX_NAME = ".comfy-fleet-models.json"


def _folder_of(kind: str) -> str:
    import folder_paths  # ComfyUI's

    return {
        "input": folder_paths.get_input_directory,
        "output": folder_paths.get_output_directory,
        "temp": folder_paths.get_temp_directory,
    }[kind]()


def _model_folder(name: str) -> model_store.Folder | None:
    import folder_paths  # ComfyUI's

    canonical = folder_paths.map_legacy(name)
    known = folder_paths.folder_names_and_paths.get(canonical)
    if known is None:
        return None
    folders, extensions = known
    return model_store.Folder(canonical, tuple(folders), frozenset(e.lower() for e in extensions))


def _queued_prompts() -> list[Any]:
    import server  # ComfyUI's

    running, queued = server.PromptServer.instance.prompt_queue.get_current_queue_volatile()
    return [item[2] for item in [*running, *queued]]


def _changed(folder: str) -> None:
    import folder_paths  # ComfyUI's

    # ComfyUI caches each folder's file list and checks it by folder mtimes, which a file
    # placed within the same clock tick would not change: drop the list, as a refresh does.
    folder_paths.filename_list_cache.pop(folder, None)


def _comfy_host() -> model_store.Host:
    import folder_paths  # ComfyUI's

    return model_store.Host(
        folder=_model_folder,
        queued_prompts=_queued_prompts,
        changed=_changed,
        index_path=Path(folder_paths.models_dir) / INDEX_NAME,
    )


def _register() -> None:
    try:
        import server  # ComfyUI's PromptServer module
    except ImportError:  # imported outside ComfyUI, e.g. by the stand-in for paths.py
        return
    routes = server.PromptServer.instance.routes
    delete, info = handlers.make_handlers(_folder_of)
    routes.post("/comfy-fleet/cleanup/delete")(delete)
    routes.get("/comfy-fleet/cleanup/info")(info)
    store = model_store.ModelStore(_comfy_host())
    pull, listing, models_info = model_handlers.make_handlers(
        store, lambda: model_rules.config_from_env(os.environ))
    routes.post("/comfy-fleet/models/pull")(pull)
    routes.get("/comfy-fleet/models")(listing)
    routes.get("/comfy-fleet/models/info")(models_info)


_register()
