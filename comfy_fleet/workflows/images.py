"""How many pixels an image will decode to, read from its headers before any pixel is decoded.

Contract of `measure`: given an image opened lazily by `PIL.Image.open` (headers read, no pixel
decoded) and its bytes, return its `Extent`: the largest frame width and height and the number
of frames, so that ``extent.pixels`` (frames × width × height) bounds what decoding every frame
can produce. Counting stops after ``max_frames + 1`` frames, so it costs at most that many header
reads whatever the file claims; a count above ``max_frames`` means "more than". No frame is
decoded: each format is measured the one way its Pillow plugin allows without decoding.

- GIF: its blocks are walked here (Pillow's `n_frames` walks them all, and a frame may grow the
  canvas beyond the screen size only when Pillow decodes it); the canvas is the union of the
  screen and every frame's rectangle.
- PNG (APNG), WebP, and other formats whose plugin reads the frame count from the header when
  the file is opened: that count, each frame within the canvas (Pillow and libwebp refuse an
  APNG or WebP frame outside it).
- TIFF and MPO: pages may differ in size and seeking to a page reads only its header, so every
  page up to the cap is visited.
- A format whose frame count Pillow could learn only by seeking (and so decoding) through the
  file is refused as `Uncountable`.

`excess` says, for a person, why an extent is over its limits. `guard_pillow` sets Pillow's own
decompression-bomb guard to the same limit, so that Pillow refuses any single frame over it
wherever it opens one (an image nested in another, a frame that grows the canvas), never less
strictly than `excess` and never more.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass

from PIL import Image

#: Formats whose pages may each have a size of their own and whose `seek` reads headers only.
SEEK_WALK_FORMATS = frozenset({"TIFF", "MPO"})


class Uncountable(ValueError):
    """The image's frames cannot be counted without decoding them."""


@dataclass(frozen=True)
class Extent:
    """What decoding an image produces at most: `frames` frames of `width` × `height`."""

    format: str
    width: int
    height: int
    frames: int

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def measure(img: Image.Image, data: bytes, *, max_frames: int) -> Extent:
    """The extent of `img` (opened lazily from `data`), counting at most `max_frames` + 1 frames.

    Leaves `img` at its first frame. Raises `Uncountable`, or `ValueError`, `EOFError`,
    `OSError`, `SyntaxError` from Pillow for headers it cannot read.
    """
    fmt = img.format or "unknown"
    if fmt == "GIF":
        width, height, frames = gif_extent(data, max_frames=max_frames)
        width, height = max(width, img.width), max(height, img.height)
    elif fmt in SEEK_WALK_FORMATS:
        width, height, frames = _walk_pages(img, max_frames=max_frames)
    else:
        width, height = img.size
        frames = _declared_frames(img, fmt)
    return Extent(fmt, width, height, min(frames, max_frames + 1))


def excess(extent: Extent, *, max_pixels: int, max_frames: int) -> str | None:
    """Why `extent` is over the limits, for a person; None when it is within them."""
    if extent.frames > max_frames:
        return (
            f"the {extent.format} image has more than {max_frames} frames; "
            f"the limit is {max_frames}"
        )
    if extent.pixels > max_pixels:
        frames = f" x {extent.frames} frames" if extent.frames > 1 else ""
        return (
            f"image is {extent.width}x{extent.height}{frames} = {extent.pixels} pixels; "
            f"the limit is {max_pixels}"
        )
    return None


def guard_pillow(max_pixels: int) -> None:
    """Make Pillow refuse, as an error, any single frame of more than `max_pixels` pixels.

    Process-wide: Pillow's limit is a module global. The warning filter is added once (not per
    call inside `warnings.catch_warnings`, which is not thread-safe and images are decoded in
    threads); it is re-added if something reset the filters.
    """
    if Image.MAX_IMAGE_PIXELS != max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    for action, _msg, category, _mod, _line in warnings.filters:
        if category is Image.DecompressionBombWarning and action == "error":
            return
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _declared_frames(img: Image.Image, fmt: str) -> int:
    # An instance attribute was read from the header at open; a property would seek (and, for
    # most formats, decode) through the whole file to answer.
    if isinstance(getattr(type(img), "n_frames", None), property):
        raise Uncountable(f"the frames of a {fmt} image cannot be counted without decoding them")
    frames = img.__dict__.get("n_frames", 1)
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"the {fmt} header declares {frames!r} frames")
    return frames


def _walk_pages(img: Image.Image, *, max_frames: int) -> tuple[int, int, int]:
    width = height = frames = 0
    try:
        while frames <= max_frames:
            img.seek(frames)  # reads this page's header (a TIFF IFD, an MPO frame's markers)
            width, height = max(width, img.width), max(height, img.height)
            frames += 1
    except EOFError:
        pass
    finally:
        img.seek(0)
    if frames == 0:
        raise EOFError("the image has no frames")
    return width, height, frames


def gif_extent(data: bytes, *, max_frames: int) -> tuple[int, int, int]:
    """(canvas width, canvas height, frames) of a GIF, from its blocks; pure.

    Mirrors how Pillow reads a GIF (unknown bytes between blocks are skipped, the file may end
    without a trailer), so it counts at least the frames Pillow would decode. The canvas is the
    logical screen grown to hold every frame's rectangle, as Pillow grows it while decoding.
    Stops after `max_frames` + 1 frames.
    """
    if len(data) < 13 or data[:3] != b"GIF":
        raise SyntaxError("not a GIF file")
    width, height = struct.unpack_from("<HH", data, 6)
    pos = 13 + _colour_table_size(data[10])
    frames = 0
    end = len(data)
    while pos < end and frames <= max_frames:
        block = data[pos]
        pos += 1
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: a label, then data sub-blocks
            pos = _skip_sub_blocks(data, pos + 1)
        elif block == 0x2C:  # image descriptor
            if pos + 9 > end:
                break
            left, top, w, h = struct.unpack_from("<HHHH", data, pos)
            pos += 9 + _colour_table_size(data[pos + 8])
            pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
            frames += 1
            width, height = max(width, left + w), max(height, top + h)
    return width, height, frames


def _colour_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos
