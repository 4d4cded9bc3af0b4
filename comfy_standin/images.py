"""Image maths of the real model-free nodes, on float32 numpy arrays shaped like ComfyUI's
IMAGE tensors: ``[batch, height, width, 3]`` with values in 0..1.

The arithmetic is float32 throughout so that saved pixels match the real server's torch
results (an inverted 128 becomes 126, as in trace b).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


class TorchRuntimeError(RuntimeError):
    """Reported as ``RuntimeError``, the type torch raises (trace c)."""


def empty_image(width: int, height: int, batch_size: int, color: int) -> np.ndarray:
    """EmptyImage: a solid colour; channels are ``component / 0xFF`` in float32."""
    rgb = np.array(
        [((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF],
        dtype=np.float32,
    )
    return np.broadcast_to(rgb, (batch_size, height, width, 3)).copy()


def invert(image: np.ndarray) -> np.ndarray:
    """ImageInvert: ``1.0 - image``."""
    return np.float32(1.0) - image


def _gaussian_1d(kernel_size: int, sigma: float) -> np.ndarray:
    # ComfyUI's kernel lives on linspace(-1, 1); the 2-D kernel is separable.
    x = np.linspace(-1.0, 1.0, kernel_size, dtype=np.float32)
    g = np.exp(-(x * x) / np.float32(2.0 * sigma * sigma)).astype(np.float32)
    return g / g.sum(dtype=np.float32)


def blur(image: np.ndarray, blur_radius: int, sigma: float) -> np.ndarray:
    """ImageBlur: reflect pad by the radius, then a Gaussian of size ``2r+1``.

    Raises the torch error of trace c when the radius is not smaller than the image.
    """
    if blur_radius == 0:
        return image
    b, h, w, c = image.shape
    r = blur_radius
    if r >= w:
        raise TorchRuntimeError(
            "Argument #4: Padding size should be less than the corresponding input dimension, "
            f"but got: padding ({r}, {r}) at dimension 3 of input [{b}, {c}, {h}, {w}]"
        )
    if r >= h:
        # torch prints the rank, not the sizes, in this second check.
        raise TorchRuntimeError(
            "Argument #6: Padding size should be less than the corresponding input dimension, "
            f"but got: padding ({r}, {r}) at dimension 2 of input 4"
        )
    k = _gaussian_1d(2 * r + 1, sigma)
    padded = np.pad(image, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    # Separable 'valid' convolution: rows then columns.
    tmp = np.zeros((b, h + 2 * r, w, c), dtype=np.float32)
    for i in range(2 * r + 1):
        tmp += k[i] * padded[:, :, i : i + w, :]
    out = np.zeros((b, h, w, c), dtype=np.float32)
    for i in range(2 * r + 1):
        out += k[i] * tmp[:, i : i + h, :, :]
    return out


_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def scale(image: np.ndarray, method: str, width: int, height: int, crop: str) -> np.ndarray:
    """ImageScale: a 0 side keeps the aspect ratio; ``crop=center`` crops to it first."""
    b, h, w, _ = image.shape
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    src = image
    if crop == "center":
        old_aspect, new_aspect = w / h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((w - w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((h - h * (old_aspect / new_aspect)) / 2)
        src = image[:, y : h - y, x : w - x, :]
    resample = _RESAMPLE.get(method, Image.Resampling.BILINEAR)
    out = np.empty((b, height, width, 3), dtype=np.float32)
    for i in range(b):
        for ch in range(3):
            plane = Image.fromarray(np.ascontiguousarray(src[i, :, :, ch]), mode="F")
            out[i, :, :, ch] = np.asarray(plane.resize((width, height), resample))
    return np.clip(out, 0.0, 1.0)


def to_pil(frame: np.ndarray) -> Image.Image:
    """One ``[H, W, 3]`` frame to an RGB image, as SaveImage does (clip, truncate)."""
    i = np.float32(255.0) * frame
    return Image.fromarray(np.clip(i, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    """Encode a JPEG, as ComfyUI encodes its latent previews (quality 95)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image, texts: dict[str, str] | None, compress_level: int) -> bytes:
    """Encode a PNG with optional text chunks."""
    info = None
    if texts:
        info = PngInfo()
        for key, value in texts.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def load_image(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """LoadImage: ``(image [1,H,W,3], mask [1,H,W])``; mask is ``1 - alpha`` or 64x64 zeros."""
    img = Image.open(io.BytesIO(data))
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img) or img
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    rgb = np.array(img.convert("RGB")).astype(np.float32) / np.float32(255.0)
    if "A" in img.getbands():
        alpha = np.array(img.getchannel("A")).astype(np.float32) / np.float32(255.0)
        mask = np.float32(1.0) - alpha
    elif img.mode == "P" and "transparency" in img.info:
        alpha = np.array(img.convert("RGBA").getchannel("A")).astype(np.float32) / np.float32(255.0)
        mask = np.float32(1.0) - alpha
    else:
        mask = np.zeros((64, 64), dtype=np.float32)
    return rgb[None, ...], mask[None, ...]


# --- torch-style str() of a tensor, for execution_error.current_inputs -------------------------


def _summarize(a: np.ndarray, edge: int = 3) -> np.ndarray:
    if a.ndim == 0:
        return a
    if a.shape[0] > 2 * edge:
        parts = [_summarize(a[i], edge) for i in (*range(edge), *range(len(a) - edge, len(a)))]
    else:
        parts = [_summarize(a[i], edge) for i in range(len(a))]
    return np.stack(parts) if parts else a


class _Formatter:
    def __init__(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        nonzero = np.abs(finite[finite != 0])
        self.int_mode = bool(np.all(np.ceil(finite) == finite)) if finite.size else True
        self.sci = False
        if nonzero.size and not self.int_mode:
            hi, lo = float(nonzero.max()), float(nonzero.min())
            self.sci = hi / lo > 1000.0 or hi > 1.0e8
        self.width = max((len(self._raw(float(v))) for v in values.ravel()), default=1)

    def _raw(self, v: float) -> str:
        if self.int_mode:
            s = f"{v:.0f}"
            return s + "." if math.isfinite(v) else s
        return f"{v:.4e}" if self.sci else f"{v:.4f}"

    def format(self, v: float) -> str:
        s = self._raw(v)
        return " " * (self.width - len(s)) + s


def _tstr(a: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    edge = 3
    if a.ndim == 1:
        per_line = max(1, (80 - indent) // (fmt.width + 2))
        vals = a.tolist()
        if summarize and len(vals) > 2 * edge:
            data = [fmt.format(v) for v in vals[:edge]] + [" ..."]
            data += [fmt.format(v) for v in vals[-edge:]]
        else:
            data = [fmt.format(v) for v in vals]
        lines = [", ".join(data[i : i + per_line]) for i in range(0, len(data), per_line)]
        return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"
    if summarize and a.shape[0] > 2 * edge:
        slices = [_tstr(a[i], indent + 1, summarize, fmt) for i in range(edge)] + ["..."]
        slices += [_tstr(a[i], indent + 1, summarize, fmt) for i in range(len(a) - edge, len(a))]
    else:
        slices = [_tstr(a[i], indent + 1, summarize, fmt) for i in range(a.shape[0])]
    return "[" + ("," + "\n" * (a.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def tensor_repr(a: np.ndarray) -> str:
    """What ``str(torch_tensor)`` prints for a float32 tensor (default print options)."""
    summarize = a.size > 1000
    fmt = _Formatter(_summarize(a) if summarize else a)
    return "tensor(" + _tstr(a, len("tensor("), summarize, fmt) + ")"
