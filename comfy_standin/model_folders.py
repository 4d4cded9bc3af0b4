"""The stand-in's model folders: the comfy-fleet extension's model routes, served by the
extension's own code, and the loaders' choice lists as the real server shows them.

The real server lists every file of a model folder (with an extension its loaders take) in its
loaders' choices, re-reading the folder when it changed. The stand-in lists the names it was
configured with (it has no files behind them) plus the files in its models folder
(``<models_dir>/<folder>/…``), which is where ``POST /comfy-fleet/models/pull`` writes, and where
a test may put (or remove) a file: ``refresh``, called wherever the real server lists its files
(``/object_info``, ``/models/{folder}``, ``/embeddings``, validating a prompt), finds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from comfyui_extension.comfy_fleet_cleanup import model_handlers, model_rules, model_store

from .knobs import Counters, Knobs
from .validation import Catalogue

#: The model folders of ComfyUI 0.3.64 (``GET /models`` lists them in this order).
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
]
#: folder_paths.supported_pt_extensions, and the folders whose loaders take other files.
PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
EXTENSIONS = {"configs": frozenset({".yaml"}), "diffusers": frozenset({"folder"}),
              "custom_nodes": frozenset(), "classifiers": frozenset({""})}
#: folder_paths.map_legacy
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
INDEX_NAME = ".comfy-fleet-models.json"


def _listed(name: str, extensions: frozenset[str]) -> bool:
    # folder_paths.filter_files_extensions
    return not extensions or os.path.splitext(name)[-1].lower() in extensions


def scan(models_dir: Path) -> dict[str, list[str]]:
    """The files of each model folder under ``models_dir``, as ``get_filename_list`` names them
    (relative, "/"-separated on POSIX, sorted; ``.git`` folders skipped)."""
    found: dict[str, list[str]] = {}
    for folder in MODEL_FOLDERS:
        root = models_dir / folder
        extensions = EXTENSIONS.get(folder, PT_EXTENSIONS)
        names = []
        for dirpath, subdirs, filenames in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            names += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames
                      if _listed(f, extensions)]
        if names:
            found[folder] = sorted(names)
    return found


class ModelFolders:
    """The models of one stand-in; survives its restarts, as files on disk do."""

    def __init__(
        self,
        models_dir: Path,
        configured: dict[str, list[str]],
        knobs: Knobs,
        counters: Counters,
        queued_prompts: Callable[[], Iterable[Any]],
        on_change: Callable[[Catalogue], None],
    ) -> None:
        self.dir = Path(os.path.abspath(models_dir))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._configured = configured
        self._knobs = knobs
        self._counters = counters
        self._on_change = on_change
        #: the files on disk as the loaders list them now (`scan`)
        self._scanned: dict[str, list[str]] = {}
        self.store = model_store.ModelStore(model_store.Host(
            folder=self._folder,
            queued_prompts=queued_prompts,
            changed=lambda _folder: self._on_change(self.catalogue()),
            index_path=self.dir / INDEX_NAME,
        ))
        self._pull, self._listing, self._info = model_handlers.make_handlers(
            self.store, self.config)

    def _folder(self, name: str) -> model_store.Folder | None:
        canonical = LEGACY.get(name, name)
        if canonical not in MODEL_FOLDERS:
            return None
        return model_store.Folder(canonical, (str(self.dir / canonical),),
                                  EXTENSIONS.get(canonical, PT_EXTENSIONS))

    def config(self) -> model_rules.Config:
        """The extension's settings, from the knobs (which default to the environment's)."""
        return model_rules.config_from_env({
            model_rules.ENV_BUCKET_URL: self._knobs.model_bucket_url,
            model_rules.ENV_CACHE_BYTES: str(self._knobs.model_cache_bytes),
        })

    def catalogue(self) -> Catalogue:
        """The node catalogue listing the configured names and the files on disk."""
        self._scanned = scan(self.dir)
        models = {k: list(v) for k, v in self._configured.items()}
        for folder, names in self._scanned.items():
            models[folder] = [*models.get(folder, []), *names]
        return Catalogue.load(models)

    def refresh(self) -> None:
        """Files put in or taken out of the models folder since the last look are listed from
        now on, as the real server's lists are (``folder_paths`` keeps each list with its
        folders' mtimes and reads a folder again once one changed)."""
        if scan(self.dir) != self._scanned:
            self._on_change(self.catalogue())

    # the extension's routes ------------------------------------------------------------------
    async def pull(self, request: web.Request) -> web.Response:
        if not self._knobs.models_extension:
            return web.Response(status=404)
        self._counters.model_pulls += 1
        response = await self._pull(request)
        if response.status == 200 and json.loads(response.text or "{}").get("fetched"):
            self._counters.models_fetched += 1
        return response

    async def listing(self, request: web.Request) -> web.Response:
        if not self._knobs.models_extension:
            return web.Response(status=404)
        return await self._listing(request)

    async def info(self, request: web.Request) -> web.Response:
        if not self._knobs.models_extension:
            return web.Response(status=404)
        return await self._info(request)
