"""ComfyUI as the extension sees it, faked: its ``server`` and ``folder_paths`` modules in
``sys.modules``, with the folder layout of ComfyUI 0.3.64 under ``tmp_path/comfy``.

The ``comfy`` fixture (conftest.py) installs the fakes; ``load_extension(comfy)`` then loads the package the way ComfyUI's
``nodes.load_custom_node`` loads a folder, and returns the aiohttp app with its routes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

PACKAGE = Path(__file__).resolve().parents[2] / "comfyui_extension" / "comfy_fleet_cleanup"
#: ComfyUI's sys.modules name for a custom node folder
MODULE_NAME = str(PACKAGE).replace(".", "_x_")
PT = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class FakePromptQueue:
    """``execution.PromptQueue``'s reading side: items ``(number, prompt_id, prompt, extra,
    outputs)``."""

    def __init__(self) -> None:
        self.running: list[tuple[Any, ...]] = []
        self.queued: list[tuple[Any, ...]] = []

    def get_current_queue_volatile(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return list(self.running), list(self.queued)

    def add(self, prompt: dict[str, Any], *, running: bool = False) -> None:
        item = (len(self.running) + len(self.queued), f"p{id(prompt)}", prompt, {}, [])
        (self.running if running else self.queued).append(item)


@dataclasses.dataclass
class FakeComfy:
    root: Path
    dirs: dict[str, Path]
    models_dir: Path
    folder_paths: types.ModuleType
    queue: FakePromptQueue
    routes: web.RouteTableDef

    def folder(self, name: str) -> Path:
        return Path(self.folder_paths.folder_names_and_paths[name][0][0])


@pytest.fixture
def comfy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeComfy:
    root = tmp_path / "comfy"
    dirs = {k: root / k for k in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("keep me")
    models = root / "models"
    folders: dict[str, tuple[list[str], Any]] = {
        "checkpoints": ([str(models / "checkpoints")], PT),
        "configs": ([str(models / "configs")], [".yaml"]),
        "loras": ([str(models / "loras")], PT),
        "vae": ([str(models / "vae")], PT),
        "text_encoders": ([str(models / "text_encoders"), str(models / "clip")], PT),
        "diffusion_models": ([str(models / "unet"), str(models / "diffusion_models")], PT),
        "controlnet": ([str(models / "controlnet"), str(models / "t2i_adapter")], PT),
        "upscale_models": ([str(models / "upscale_models")], PT),
        "diffusers": ([str(models / "diffusers")], ["folder"]),
        "custom_nodes": ([str(root / "custom_nodes")], set()),
    }
    for paths, _ in folders.values():
        Path(paths[0]).mkdir(parents=True, exist_ok=True)
    queue = FakePromptQueue()
    routes = web.RouteTableDef()
    fake_server = types.ModuleType("server")
    fake_server.PromptServer = types.SimpleNamespace(
        instance=types.SimpleNamespace(routes=routes, prompt_queue=queue))
    fp = types.ModuleType("folder_paths")
    fp.get_input_directory = lambda: str(dirs["input"])
    fp.get_output_directory = lambda: str(dirs["output"])
    fp.get_temp_directory = lambda: str(dirs["temp"])
    fp.models_dir = str(models)
    fp.folder_names_and_paths = folders
    fp.filename_list_cache = {}
    fp.map_legacy = lambda name: {"unet": "diffusion_models", "clip": "text_encoders"}.get(name, name)
    fp.get_folder_paths = lambda name: folders[fp.map_legacy(name)][0][:]
    monkeypatch.setitem(sys.modules, "server", fake_server)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return FakeComfy(root, dirs, models, fp, queue, routes)


def load_extension(comfy: FakeComfy) -> tuple[types.ModuleType, web.Application]:
    """The package loaded as ComfyUI loads a custom node folder, and an app with its routes."""
    for name in [n for n in sys.modules if n == MODULE_NAME or n.startswith(MODULE_NAME + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, PACKAGE / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    app = web.Application()
    app.add_routes(comfy.routes)
    return module, app


def unload_extension() -> None:
    for name in [n for n in sys.modules if n == MODULE_NAME or n.startswith(MODULE_NAME + ".")]:
        del sys.modules[name]
