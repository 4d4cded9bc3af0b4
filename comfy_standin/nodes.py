"""Node execution: the model-free image nodes run for real, every other class is simulated.

A node gets its resolved inputs and returns ``(outputs, ui)``: ``outputs`` is the tuple that
downstream links index, ``ui`` the dict the real node reports (``{"images": [...]}`` …) or
``{}``. IMAGE values are float32 ``[B, H, W, 3]`` arrays, so simulated decoders feed real savers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from . import images, media
from .files import Dirs, annotated_path, save_path, saved
from .knobs import Counters, Knobs

#: pixels above which real image work leaves the event loop for a thread
_OFFLOAD_PIXELS = 256 * 256

Progress = Callable[[int, int, bytes | None], Awaitable[None]]


@dataclass
class SimValue:
    """A simulated non-image value (MODEL, CLIP, CONDITIONING, …) with a little metadata."""

    type: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:  # what current_inputs shows for it
        return f"<{self.type} from comfy_standin>"


@dataclass
class Latent:
    width: int
    height: int
    batch: int

    def __str__(self) -> str:
        shape = f"[{self.batch}, 4, {self.height // 8}, {self.width // 8}]"
        return f"{{'samples': tensor of shape {shape}}}"


@dataclass
class NodeContext:
    """What one node execution may touch."""

    node_id: str
    class_type: str
    prompt_id: str
    info: dict[str, Any]
    dirs: Dirs
    knobs: Knobs
    counters: Counters
    png_prompt: dict[str, Any] | None
    extra_pnginfo: dict[str, Any] | None
    progress: Progress


def is_changed(class_type: str, inputs: dict[str, Any], dirs: Dirs) -> Any:
    """IS_CHANGED of the nodes that have one here: LoadImage hashes the file's bytes."""
    if class_type in ("LoadImage", "LoadImageMask") and isinstance(inputs.get("image"), str):
        try:
            with open(annotated_path(dirs, inputs["image"]), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None
    if class_type == "SaveImageWebsocket":
        return time.time()  # its IS_CHANGED: never cached
    return None


# -- file writing --------------------------------------------------------------------------------
def _png_texts(ctx: NodeContext) -> dict[str, str]:
    texts: dict[str, str] = {}
    if ctx.png_prompt is not None:
        texts["prompt"] = json.dumps(ctx.png_prompt)
    for key, value in (ctx.extra_pnginfo or {}).items():
        texts[key] = json.dumps(value)
    return texts


def _write(ctx: NodeContext, path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    ctx.counters.files_written += 1


def save_images(
    ctx: NodeContext, imgs: np.ndarray, prefix: str, kind: str, compress_level: int
) -> dict[str, Any]:
    base = ctx.dirs.output if kind == "output" else ctx.dirs.temp
    folder, filename, counter, subfolder = save_path(prefix, base, imgs.shape[2], imgs.shape[1])
    texts = _png_texts(ctx)
    results = []
    for batch_number, frame in enumerate(imgs):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        png = images.png_bytes(images.to_pil(frame), texts, compress_level)
        _write(ctx, os.path.join(folder, name), png)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    saved(folder, filename, counter)
    return {"images": results}


def _save_one(ctx: NodeContext, prefix: str, ext: str, data: bytes, kind: str = "output") -> dict:
    base = ctx.dirs.output if kind == "output" else ctx.dirs.temp
    folder, filename, counter, subfolder = save_path(prefix, base)
    name = f"{filename}_{counter:05}_.{ext}"
    _write(ctx, os.path.join(folder, name), data)
    saved(folder, filename, counter + 1)
    return {"filename": name, "subfolder": subfolder, "type": kind}


def _temp_prefix() -> str:
    return "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))


# -- the real nodes ------------------------------------------------------------------------------
def _load_image(ctx: NodeContext, image: str) -> tuple[tuple[Any, ...], dict]:
    with open(annotated_path(ctx.dirs, image), "rb") as f:
        data = f.read()
    img, mask = images.load_image(data)
    return (img, mask), {}


def _real(ctx: NodeContext, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict] | None:
    """Run a real node; None when the class is not one of them."""
    ct = ctx.class_type
    if ct == "EmptyImage":
        img = images.empty_image(
            int(inp["width"]), int(inp["height"]), int(inp["batch_size"]), int(inp["color"])
        )
        return (img,), {}
    if ct == "LoadImage":
        return _load_image(ctx, inp["image"])
    if ct == "ImageInvert":
        return (images.invert(inp["image"]),), {}
    if ct == "ImageScale":
        out = images.scale(
            inp["image"], inp["upscale_method"], int(inp["width"]), int(inp["height"]), inp["crop"]
        )
        return (out,), {}
    if ct == "ImageBlur":
        return (images.blur(inp["image"], int(inp["blur_radius"]), float(inp["sigma"])),), {}
    if ct == "SaveImage":
        return (), save_images(ctx, inp["images"], str(inp["filename_prefix"]), "output", 4)
    if ct == "PreviewImage":
        return (), save_images(ctx, inp["images"], _temp_prefix(), "temp", 1)
    return None


def _pixels(value: Any) -> int:
    if not isinstance(value, np.ndarray) or value.ndim < 3:
        return 0
    return int(value.shape[0] * value.shape[1] * value.shape[2])


# -- simulation ----------------------------------------------------------------------------------
def _dims(inp: dict[str, Any]) -> tuple[int, int, int]:
    """(width, height, batch) a simulated node's image/latent outputs should have."""
    for v in inp.values():
        if isinstance(v, Latent):
            return v.width, v.height, v.batch
    for v in inp.values():
        if isinstance(v, np.ndarray) and v.ndim == 4:
            return v.shape[2], v.shape[1], v.shape[0]
    w, h, b = inp.get("width"), inp.get("height"), inp.get("batch_size", 1)
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        return w, h, b if isinstance(b, int) and b > 0 else 1
    return 64, 64, 1


def _sim_image(w: int, h: int, b: int, seed: int) -> np.ndarray:
    # A deterministic gradient, so a "generated" image is a real, non-blank picture.
    rng = np.random.default_rng(seed)
    base = rng.random(3, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (xx / max(w - 1, 1) + yy / max(h - 1, 1)) / np.float32(2.0)
    img = (base[None, None, :] * np.float32(0.5) + grad[:, :, None] * np.float32(0.5)).astype(
        np.float32
    )
    return np.broadcast_to(img, (b, h, w, 3)).copy()


def _seed(ctx: NodeContext, inp: dict[str, Any]) -> int:
    plain = sorted((k, str(v)) for k, v in inp.items() if not isinstance(v, np.ndarray))
    text = ctx.class_type + repr(plain)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _steps(ctx: NodeContext, inp: dict[str, Any]) -> int:
    steps = inp.get("steps")
    if isinstance(steps, int) and steps > 0:
        return steps
    for v in inp.values():
        if isinstance(v, SimValue) and isinstance(v.meta.get("steps"), int):
            return v.meta["steps"]
    return ctx.knobs.sampler_steps


def _is_sampler(ctx: NodeContext) -> bool:
    return "Sampler" in ctx.class_type and "LATENT" in ctx.info.get("output", [])


def _sim_outputs(ctx: NodeContext, inp: dict[str, Any]) -> tuple[Any, ...]:
    w, h, b = _dims(inp)
    outs: list[Any] = []
    meta: dict[str, Any] = {}
    if isinstance(inp.get("steps"), int):
        meta["steps"] = inp["steps"]
    for v in inp.values():
        if isinstance(v, SimValue) and "steps" in v.meta:
            meta.setdefault("steps", v.meta["steps"])
    for out_type in ctx.info.get("output", []):
        if out_type == "IMAGE":
            outs.append(_sim_image(w, h, b, _seed(ctx, inp)))
        elif out_type == "MASK":
            outs.append(np.zeros((b, h, w), dtype=np.float32))
        elif out_type == "LATENT":
            outs.append(Latent(w, h, b))
        else:
            outs.append(SimValue(out_type if isinstance(out_type, str) else "COMBO", dict(meta)))
    return tuple(outs)


def _frames(value: Any) -> list[Image.Image]:
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return [images.to_pil(f) for f in value]
    return [images.to_pil(_sim_image(64, 64, 1, i)[0]) for i in range(2)]


def _sim_ui(ctx: NodeContext, inp: dict[str, Any]) -> dict[str, Any]:
    """Files and UI dict of a simulated output node, by what the real class reports."""
    ct = ctx.class_type
    prefix = str(inp.get("filename_prefix", "ComfyUI"))
    if ct == "SaveAnimatedWEBP" or ct == "SaveAnimatedPNG":
        frames = _frames(inp.get("images"))
        fps = float(inp.get("fps", 6.0))
        buf = io.BytesIO()
        fmt = "WEBP" if ct == "SaveAnimatedWEBP" else "PNG"
        frames[0].save(
            buf,
            format=fmt,
            save_all=True,
            append_images=frames[1:],
            duration=int(1000 / max(fps, 0.01)),
            loop=0,
        )
        ext = "webp" if fmt == "WEBP" else "png"
        return {"images": [_save_one(ctx, prefix, ext, buf.getvalue())], "animated": [True]}
    if ct == "SaveWEBM":
        data = media.webm(_frames(inp.get("images")), float(inp.get("fps", 24.0)))
        return {"images": [_save_one(ctx, prefix, "webm", data)], "animated": [True]}
    if ct == "SaveVideo":
        fmt = str(inp.get("format", "auto"))
        if fmt == "webm":
            data, ext = media.webm(_frames(None), 24.0), "webm"
        else:
            data, ext = media.mp4_skeleton(), "mp4"
        return {"images": [_save_one(ctx, prefix, ext, data)], "animated": [True]}
    if ct.startswith("SaveAudio") or ct == "PreviewAudio":
        # Audio nodes are absent from the recorded catalogue (no torchaudio there); should a
        # catalogue have them, they write PCM silence as a real .wav.
        kind = "temp" if ct == "PreviewAudio" else "output"
        item = _save_one(
            ctx, prefix if kind == "output" else _temp_prefix(), "wav", media.wav_silence(), kind
        )
        return {"audio": [item]}
    if ct == "SaveLatent":
        return {"latents": [_save_one(ctx, prefix, "latent", media.safetensors_empty())]}
    if ct in (
        "CheckpointSave",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "ImageOnlyCheckpointSave",
        "LoraSave",
        "SaveLoRANode",
    ):
        _save_one(ctx, prefix, "safetensors", media.safetensors_empty())
        return {}
    if ct == "SaveSVGNode":
        return {"images": [_save_one(ctx, prefix, "svg", media.svg())]}
    if ct == "SaveGLB":
        return {"3d": [_save_one(ctx, prefix, "glb", media.glb_empty())]}
    if ct == "MaskPreview":
        mask = inp.get("mask")
        if isinstance(mask, np.ndarray) and mask.ndim == 3:
            imgs = np.repeat(mask[..., None], 3, axis=-1).astype(np.float32)
        else:
            imgs = _sim_image(64, 64, 1, 0)
        return save_images(ctx, imgs, _temp_prefix(), "temp", 1)
    if ct == "LossGraphNode":
        return save_images(ctx, _sim_image(64, 64, 1, 1), _temp_prefix(), "temp", 1)
    if ct == "PreviewAny":
        return {"text": [str(inp.get("source"))]}
    imgs = inp.get("images")
    if isinstance(imgs, np.ndarray) and imgs.ndim == 4:
        return save_images(ctx, imgs, prefix, "output", 4)
    return {}


async def _save_image_websocket(ctx: NodeContext, inp: dict[str, Any]) -> None:
    imgs = inp["images"]
    total = int(imgs.shape[0])
    for step, frame in enumerate(imgs):
        png = images.png_bytes(images.to_pil(frame), None, 1)
        await ctx.progress(step, total, png)


#: the real server's `--preview-size` default: previews are fit into this many pixels a side
PREVIEW_MAX_SIZE = 512


def _latent_preview(ctx: NodeContext, inp: dict[str, Any], step: int) -> bytes | None:
    """What a real sampler with previews on sends after a step: a JPEG of the latent decoded
    to RGB (Latent2RGB), the latent's size (an eighth of the image's), at most
    PREVIEW_MAX_SIZE a side; None with `preview_method` "none", as the real default."""
    if ctx.knobs.preview_method == "none":
        return None
    w, h, _b = _dims(inp)
    scale = min(1.0, PREVIEW_MAX_SIZE / max(w // 8, h // 8, 1))
    pw, ph = max(1, int(w // 8 * scale)), max(1, int(h // 8 * scale))
    frame = _sim_image(pw, ph, 1, _seed(ctx, inp) + step)[0]
    return images.jpeg_bytes(images.to_pil(frame))


async def run_node(ctx: NodeContext, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Execute one node (after its configured delay). Exceptions propagate to the executor."""
    delay = ctx.knobs.delay_for(ctx.class_type)
    if ctx.class_type == "SaveImageWebsocket":
        if delay:
            await asyncio.sleep(delay)
        await _save_image_websocket(ctx, inp)
        return (), {}
    if _is_sampler(ctx):
        steps = _steps(ctx, inp)
        for i in range(1, steps + 1):
            if delay:
                await asyncio.sleep(delay / steps)
            await ctx.progress(i, steps, _latent_preview(ctx, inp, i))
        return _sim_outputs(ctx, inp), {}
    if delay:
        await asyncio.sleep(delay)
    heavy = ctx.class_type in ("ImageBlur", "ImageScale") and (
        max((_pixels(v) for v in inp.values()), default=0) > _OFFLOAD_PIXELS
    )
    if heavy:
        result = await asyncio.to_thread(_real, ctx, inp)
    else:
        result = _real(ctx, inp)
    if result is not None:
        return result
    outs = _sim_outputs(ctx, inp)
    ui = _sim_ui(ctx, inp) if ctx.info.get("output_node") else {}
    return outs, ui


REAL_NODES = frozenset(
    {
        "EmptyImage",
        "LoadImage",
        "ImageInvert",
        "ImageScale",
        "ImageBlur",
        "SaveImage",
        "PreviewImage",
        "SaveImageWebsocket",
    }
)
