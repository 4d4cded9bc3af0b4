"""Image inputs: decoded or fetched, checked, normalised to PNG, and kept in S3 until dispatch
uploads them to the endpoint the task was given.

Contract of `stage_images`: every image parameter's bytes are read (base64, a data: URL, or an
http(s) URL fetched within `max_image_bytes` / `input_fetch_timeout_s` under the webhook URL
policy), opened and verified by Pillow as one of the formats ComfyUI's LoadImage reads, checked
against `max_image_pixels`, re-encoded as PNG and put under `inputs/<task_id>/<param>.png`.
A refusal raises before anything is recorded: 413 `payload_too_large` (bytes or pixels), 422
`input_rejected` / `url_forbidden` / `params_invalid`, each naming the parameter.

Why PNG: the uploaded file name already ends in `.png`; one lossless format gives ComfyUI a
predictable file, and re-encoding drops EXIF, ICC and text chunks the client may not mean to share
(the EXIF orientation is applied first, as LoadImage would have applied it).
"""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import Any

import httpx
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from comfy_fleet import errors

from comfy_fleet.workflows import params

from comfy_fleet.net import fetch
from comfy_fleet.policies import url_policy

#: Formats ComfyUI's LoadImage reads (Pillow format names).
LOADIMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Image modes PNG stores as they are; anything else becomes RGB or RGBA.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
#: Frames kept from an animated input (LoadImage makes a batch of them; a bound keeps memory sane).
MAX_FRAMES = 256


def input_key(task_id: str, param: str) -> str:
    """Where a task's staged input lives in S3 until dispatch uploads it."""
    return f"inputs/{task_id}/{param}.png"


def _rejected(param: str, problem: str) -> errors.InputRejected:
    return errors.InputRejected(
        f"params.{param}: {problem}", [{"param": param, "problem": problem}]
    )


def _too_large(param: str, problem: str) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"params.{param}: {problem}", [{"param": param, "problem": problem}]
    )


def normalise_image(data: bytes, *, max_pixels: int, param: str) -> bytes:
    """Open, verify and fully decode `data`; return it as PNG bytes.

    Pure (no I/O) and CPU-bound: call it in a thread. Raises `errors.InputRejected` when the bytes
    are not an image of LOADIMAGE_FORMATS or are damaged, `errors.PayloadTooLarge` when width x
    height exceeds `max_pixels` (checked from the header, before any pixel is decoded).
    """
    fmt: str | None = None
    try:
        with warnings.catch_warnings():
            # Pillow's own decompression-bomb guard stays on; its warning becomes a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=LOADIMAGE_FORMATS) as probe:
                width, height = probe.size
                fmt = probe.format
                if width * height > max_pixels:
                    raise _too_large(
                        param,
                        f"image is {width}x{height} = {width * height} pixels; "
                        f"the limit is {max_pixels}",
                    )
                probe.verify()
            # verify() leaves the image unusable: open again to decode every pixel.
            with Image.open(io.BytesIO(data), formats=LOADIMAGE_FORMATS) as img:
                return _to_png(img)
    except errors.FleetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(param, f"image is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise _rejected(
            param, "not an image ComfyUI can load (PNG, JPEG, WEBP, GIF, BMP or TIFF expected)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Truncated or corrupt data: Pillow reports it with any of these.
        raise _rejected(param, f"the {fmt or 'image'} data is damaged ({exc})") from None


def _to_png(img: Image.Image) -> bytes:
    frames = []
    for i, frame in enumerate(ImageSequence.Iterator(img)):
        if i >= MAX_FRAMES:
            break
        frame = ImageOps.exif_transpose(frame) or frame
        if frame.mode not in _PNG_MODES:
            has_alpha = "A" in frame.mode or "transparency" in frame.info
            frame = frame.convert("RGBA" if has_alpha else "RGB")
        frame.load()
        frames.append(frame.copy())
    out = io.BytesIO()
    first, rest = frames[0], frames[1:]
    if rest:
        # An animated input stays animated (APNG): LoadImage turns its frames into a batch.
        first.save(out, format="PNG", save_all=True, append_images=rest, compress_level=4)
    else:
        first.save(out, format="PNG", compress_level=4)
    return out.getvalue()


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
    checked: list[tuple[str, bytes]] = []
    for param in names:
        raw = await read_image_value(services, param, resolved[param])
        png = await asyncio.to_thread(
            normalise_image, raw, max_pixels=settings.max_image_pixels, param=param
        )
        checked.append((param, png))
    if services.store is None:
        raise errors.StorageUnavailable("no object store is configured for image inputs")
    staged: list[dict[str, Any]] = []
    specs = getattr(getattr(workflow, "manifest", None), "params", {}) or {}
    for param, png in checked:
        key = input_key(task_id, param)
        await services.store.put(key, png, "image/png")
        spec = specs.get(param)
        staged.append(
            {
                "param": param,
                "s3_key": key,
                "filename": names[param],
                **({"node": spec.node, "field": spec.field} if spec is not None else {}),
            }
        )
    return staged
