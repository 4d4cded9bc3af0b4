"""comfy-fleet's cleanup extension for ComfyUI: delete one input, output or temp file by name.

Copy this folder into ComfyUI's ``custom_nodes/``. It adds no nodes; it registers
``POST /comfy-fleet/cleanup/delete`` and ``GET /comfy-fleet/cleanup/info`` (ComfyUI also serves
them under ``/api``). See README.md.
"""

from __future__ import annotations

from . import handlers, paths

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "handlers", "paths"]


def _folder_of(kind: str) -> str:
    import folder_paths  # ComfyUI's

    return {
        "input": folder_paths.get_input_directory,
        "output": folder_paths.get_output_directory,
        "temp": folder_paths.get_temp_directory,
    }[kind]()


def _register() -> None:
    try:
        import server  # ComfyUI's PromptServer module
    except ImportError:  # imported outside ComfyUI, e.g. by the stand-in for paths.py
        return
    routes = server.PromptServer.instance.routes
    delete, info = handlers.make_handlers(_folder_of)
    routes.post("/comfy-fleet/cleanup/delete")(delete)
    routes.get("/comfy-fleet/cleanup/info")(info)


_register()
