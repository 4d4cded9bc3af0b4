"""Image inputs: decoded or fetched, checked, kept in S3 as received (the task's record, beside
its outputs), and normalised to PNG for dispatch to upload to the endpoint the task was given.

Contract of `stage_images`: every image parameter's bytes are read (base64, a data: URL, or an
http(s) URL fetched within `max_image_bytes` / `input_fetch_timeout_s` under the webhook URL
policy), opened lazily by Pillow as one of the formats ComfyUI's LoadImage reads, measured from
its headers (frames x width x height, `comfy_fleet.workflows.images`) against `max_image_pixels`
and MAX_FRAMES before any pixel is decoded, verified, re-encoded as PNG and put under
`inputs/<task_id>/<param>.png`; the bytes received are kept under
`tasks/<task_id>/inputs/<param>` with their sha256, content type and size (the task's `inputs`).
A refusal raises before anything is recorded: 413 `payload_too_large` (bytes, pixels or
frames; `details` give width, height, frames and the limit), 422 `input_rejected` /
`url_forbidden` / `params_invalid`, each naming the parameter.
Decoding holds one frame beyond what the PNG writer keeps of the output.

Why PNG: the uploaded file name already ends in `.png`; one lossless format gives ComfyUI a
predictable file, and re-encoding drops EXIF, ICC and text chunks the client may not mean to share
(the EXIF orientation is applied first, as LoadImage would have applied it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from comfy_fleet import errors

from comfy_fleet.workflows import images, params

from comfy_fleet.net import fetch
from comfy_fleet.policies import url_policy

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
#: Formats ComfyUI's LoadImage reads (Pillow format names).
LOADIMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Image modes PNG stores as they are; anything else becomes RGB or RGBA.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
#: Deletes running at once when staged inputs are discarded.
DISCARD_CONCURRENCY = 16
#: Frames an animated input may have (LoadImage makes a batch of them); more is refused, and
#: counting stops there, so a file claiming millions of frames costs no more to refuse.
MAX_FRAMES = 256


def input_key(task_id: str, param: str) -> str:
    """Where the PNG made of a task's input lives in S3: what dispatch uploads to ComfyUI."""
    return f"inputs/{task_id}/{param}.png"


def record_key(task_id: str, param: str) -> str:
    """Where a task's input is kept as received, beside its outputs (`tasks/<task_id>/…`)."""
    return f"tasks/{task_id}/inputs/{_UNSAFE_KEY_CHARS.sub('_', param)}"


#: Content types of the formats LoadImage reads, by their first bytes.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"),
)


def received_type(data: bytes) -> str:
    """The content type of image bytes already checked to be one LoadImage reads."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return next((t for magic, t in _MAGIC if data.startswith(magic)), "application/octet-stream")


def _rejected(param: str, problem: str) -> errors.InputRejected:
    return errors.InputRejected(
        f"params.{param}: {problem}", [{"param": param, "problem": problem}]
    )


def _too_large(param: str, problem: str, **facts: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"params.{param}: {problem}", [{"param": param, "problem": problem, **facts}]
    )


def normalise_image(data: bytes, *, max_pixels: int, param: str) -> bytes:
    """Open, verify and fully decode `data`; return it as PNG bytes.

    Pure but for Pillow's process-wide guard (`images.guard_pillow`), and CPU-bound: call it in
    a thread. Raises `errors.InputRejected` when the bytes are not an image of LOADIMAGE_FORMATS
    or are damaged, `errors.PayloadTooLarge` when frames x width x height exceeds `max_pixels` or
    the image has more than MAX_FRAMES frames: measured from the headers before any pixel is
    decoded, and enforced again frame by frame while decoding.
    """
    images.guard_pillow(max_pixels)
    fmt: str | None = None
    try:
        with Image.open(io.BytesIO(data), formats=LOADIMAGE_FORMATS) as probe:
            fmt = probe.format
            extent = images.measure(probe, data, max_frames=MAX_FRAMES)
            problem = images.excess(extent, max_pixels=max_pixels, max_frames=MAX_FRAMES)
            if problem is not None:
                raise _too_large(
                    param,
                    problem,
                    width=extent.width,
                    height=extent.height,
                    frames=extent.frames,
                    limit=max_pixels,
                )
            probe.verify()
        # verify() leaves the image unusable: open again to decode.
        return _to_png(data, extent, param)
    except errors.FleetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (set to the same limit) saw a frame over it first; its message
        # quotes twice the limit when the frame is over that, so say it in our terms.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" of {found.group(1)} pixels" if found else ""
        raise _too_large(
            param,
            f"image has a frame{size}, too large to decode safely; the limit is {max_pixels}",
            limit=max_pixels,
        ) from None
    except images.Uncountable as exc:
        raise _rejected(param, str(exc)) from None
    except UnidentifiedImageError:
        raise _rejected(
            param, "not an image ComfyUI can load (PNG, JPEG, WEBP, GIF, BMP or TIFF expected)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as exc:
        # Truncated or corrupt data: Pillow reports it with any of these.
        raise _rejected(param, f"the {fmt or 'image'} data is damaged ({exc})") from None


def _to_png(data: bytes, extent: images.Extent, param: str) -> bytes:
    out = io.BytesIO()
    with Image.open(io.BytesIO(data), formats=LOADIMAGE_FORMATS) as img:
        first = next(_decoded_frames(img, extent, param))
    if extent.frames == 1:
        first.save(out, format="PNG", compress_level=4)
        return out.getvalue()
    # An animated input stays animated (APNG): LoadImage turns its frames into a batch. Pillow's
    # writer keeps every frame it writes and walks `append_images` twice (once for the mode, once
    # to write): `_LaterFrames` decodes them one at a time on each walk, so no frame is held
    # beyond the writer's own copies and the one being decoded.
    first.save(
        out,
        format="PNG",
        save_all=True,
        append_images=_LaterFrames(data, extent, param),
        compress_level=4,
    )
    return out.getvalue()


class _LaterFrames:
    """Frames 1.. of an image, decoded afresh (and one at a time) on every iteration."""

    def __init__(self, data: bytes, extent: images.Extent, param: str) -> None:
        self._data = data
        self._extent = extent
        self._param = param

    def __iter__(self) -> Iterator[Image.Image]:
        with Image.open(io.BytesIO(self._data), formats=LOADIMAGE_FORMATS) as img:
            frames = _decoded_frames(img, self._extent, self._param)
            next(frames)  # frame 0 is the writer's first image, already held
            yield from frames


def _decoded_frames(
    img: Image.Image, extent: images.Extent, param: str
) -> Iterator[Image.Image]:
    """Each frame of `img`, decoded and ready for PNG, never more or larger than `extent`.

    The measured extent is enforced again here, before each frame is decoded, in case a file
    reads differently when decoded than when measured: decoding stops at `extent.frames`, and a
    frame larger than the measured canvas is refused.
    """
    for index in range(extent.frames):
        if index:
            try:
                img.seek(index)
            except EOFError:
                return
        if img.width > extent.width or img.height > extent.height:
            raise _too_large(
                param,
                f"frame {index} is {img.width}x{img.height}, beyond the "
                f"{extent.width}x{extent.height} its headers declared",
                width=img.width,
                height=img.height,
                frames=extent.frames,
            )
        yield _ready_for_png(img)


def _ready_for_png(frame: Image.Image) -> Image.Image:
    """The decoded current frame as a new image (the source moves on to the next frame)."""
    ready = ImageOps.exif_transpose(frame) or frame
    if ready.mode not in _PNG_MODES:
        has_alpha = "A" in ready.mode or "transparency" in ready.info
        ready = ready.convert("RGBA" if has_alpha else "RGB")
    if ready is frame:
        ready = frame.copy()  # copy() loads (decodes) the frame
    return ready


async def read_image_value(services: Any, param: str, value: Any) -> bytes:
    """The raw bytes of an image parameter's value: decoded base64 or the fetched URL."""
    settings = services.settings
    kind, payload = params.classify_image_value(
        value, max_bytes=settings.max_image_bytes, param=param
    )
    if kind == "base64":
        assert isinstance(payload, bytes)
        return payload
    assert isinstance(payload, str)
    policy: url_policy.UrlPolicy = services.url_policy
    try:
        # The pinned transport checks every address it connects to (redirects and DNS
        # rebinding included), as for webhooks: no link-local, metadata or ComfyUI endpoint.
        async with httpx.AsyncClient(transport=policy.transport()) as client:
            data, _content_type = await fetch.fetch_limited(
                client,
                payload,
                policy,
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.input_fetch_timeout_s,
            )
    except errors.InvalidRequest as exc:
        # Same class (so the same code and status), with the parameter named.
        raise type(exc)(
            f"params.{param}: {exc.message}", [{"param": param, "problem": exc.message}]
        ) from None
    if not data:
        raise _rejected(param, f"{url_policy.url_redacted(payload)} answered an empty body")
    return data


async def stage_images(
    services: Any, task_id: str, workflow: Any, resolved: dict[str, Any], names: dict[str, str]
) -> list[dict[str, Any]]:
    """Check every image parameter in `names`, then store them; returns the task's `inputs`.

    All images are read and checked before the first is stored, so a request refused for its
    second image leaves nothing behind. Raises StorageUnavailable (503) when S3 does not answer.
    """
    settings = services.settings
    checked: list[tuple[str, bytes, bytes]] = []
    for param in names:
        raw = await read_image_value(services, param, resolved[param])
        png = await asyncio.to_thread(
            normalise_image, raw, max_pixels=settings.max_image_pixels, param=param
        )
        checked.append((param, raw, png))
    if services.store is None:
        raise errors.StorageUnavailable("no object store is configured for image inputs")
    staged: list[dict[str, Any]] = []
    specs = getattr(getattr(workflow, "manifest", None), "params", {}) or {}
    for param, raw, png in checked:
        # Kept for good: the bytes received are the task's record (and a rerun's input); the
        # PNG made of them is what ComfyUI gets.
        kept, content_type = record_key(task_id, param), received_type(raw)
        await services.store.put(kept, raw, content_type)
        await services.store.put(input_key(task_id, param), png, "image/png")
        spec = specs.get(param)
        staged.append(
            {
                "param": param,
                "s3_key": kept,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "content_type": content_type,
                "size": len(raw),
                "upload_key": input_key(task_id, param),
                "filename": names[param],
                **({"node": spec.node, "field": spec.field} if spec is not None else {}),
            }
        )
    return staged


async def discard(services: Any, staged: Iterable[Mapping[str, Any]]) -> None:
    """Delete what `stage_images` stored for tasks that will not be recorded (their `inputs`),
    a few at a time. Best effort: a key that cannot be deleted now stays behind, an object no
    recorded task names."""
    store = services.store
    keys = [k for item in staged for k in (item.get("s3_key"), item.get("upload_key")) if k]
    if store is None or not keys:
        return
    gate = asyncio.Semaphore(DISCARD_CONCURRENCY)

    async def one(key: str) -> None:
        async with gate:
            with contextlib.suppress(errors.FleetError):
                await store.delete(key)

    await asyncio.gather(*(one(k) for k in keys))
