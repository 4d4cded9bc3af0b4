"""Crafted animated and multi-page images whose frames x width x height is far more than their
bytes suggest: the bombs of the image-input tests, small to send and huge to decode.

Each builder writes real, decodable files (headers and compressed data by hand where Pillow's
writers would not produce the shape, by Pillow otherwise), so a service that decodes before
measuring really spends the memory, and one that measures first refuses them.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def gif(
    width: int, height: int, frames: int, *, frame: tuple[int, int, int, int] = (0, 0, 1, 1)
) -> bytes:
    """A GIF whose logical screen is width x height, with `frames` frames of the rectangle
    `frame` = (left, top, w, h) each (one colour, a few bytes of LZW each)."""
    left, top, w, h = frame
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # global colour table of 2
    out += b"\x00\x00\x00\xff\xff\xff"
    out += b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    data = _lzw_single_colour(w * h)
    for i in range(frames):
        # A graphic control extension (10 ms, disposal "none") and the frame, colour i % 2.
        out += b"!\xf9\x04\x04\x01\x00\x00\x00"
        out += b"," + struct.pack("<HHHHB", left, top, w, h, 0)
        out += b"\x02" + (data if i % 2 == 0 else _lzw_single_colour(w * h, index=1))
    out += b";"
    return bytes(out)


def _lzw_single_colour(count: int, index: int = 0) -> bytes:
    """LZW data (minimum code size 2) of `count` pixels of colour `index`, as sub-blocks.

    Emits a clear code before every code would grow past 3 bits, so every code is 3 bits wide:
    simple, and a few bits per pixel, which keeps large frames small enough to send.
    """
    codes: list[int] = [4]
    for i in range(count):
        codes.append(index)
        if i % 2 == 1:
            codes.append(4)  # clear: the table never grows, codes stay 3 bits
    codes.append(5)
    bits = 0
    nbits = 0
    raw = bytearray()
    for code in codes:
        bits |= code << nbits
        nbits += 3
        while nbits >= 8:
            raw.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        raw.append(bits & 0xFF)
    out = bytearray()
    for start in range(0, len(raw), 255):
        piece = raw[start : start + 255]
        out += bytes([len(piece)]) + piece
    return bytes(out + b"\x00")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng(width: int, height: int, frames: int) -> bytes:
    """An APNG of a width x height 1-bit canvas (its first frame, all zeros: a few KB of zlib)
    followed by frames - 1 frames of one pixel each."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    first = zlib.compress(row * height, 9)
    one_pixel = zlib.compress(b"\x00\x80", 9)
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    out += _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    out += _chunk(b"acTL", struct.pack(">II", frames, 0))
    seq = 0

    def fctl(w: int, h: int) -> bytes:
        nonlocal seq
        body = struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 100, 0, 0)
        seq += 1
        return _chunk(b"fcTL", body)

    out += fctl(width, height)
    out += _chunk(b"IDAT", first)
    for _ in range(frames - 1):
        out += fctl(1, 1)
        out += _chunk(b"fdAT", struct.pack(">I", seq) + one_pixel)
        seq += 1
    out += _chunk(b"IEND", b"")
    return bytes(out)


def webp(width: int, height: int, frames: int) -> bytes:
    """An animated WebP whose canvas is width x height, with `frames` frames of one pixel each:
    written by Pillow on a 1x1 canvas, then the canvas size in its VP8X header raised."""
    images = [
        Image.new("RGB", (1, 1), (i % 256, 255 - i % 256, (i * 7) % 256)) for i in range(frames)
    ]
    buf = io.BytesIO()
    images[0].save(
        buf, format="WEBP", save_all=True, append_images=images[1:], duration=10, lossless=True
    )
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8X", "Pillow wrote no extended (animated) WebP"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def tiff(width: int, height: int, pages: int) -> bytes:
    """A multi-page TIFF of `pages` 1-bit pages of width x height, deflate-compressed (zeros)."""
    page = Image.new("1", (width, height), 0)
    buf = io.BytesIO()
    page.save(
        buf,
        format="TIFF",
        save_all=True,
        append_images=[page] * (pages - 1),
        compression="tiff_adobe_deflate",
    )
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (nothing decodes that many pixels)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


BUILDERS = {"gif": gif, "apng": apng, "webp": webp, "tiff": tiff}


def bomb(kind: str, width: int, height: int, frames: int) -> bytes:
    """The `kind` bomb ("gif", "apng", "webp" or "tiff") of frames x width x height."""
    return BUILDERS[kind](width, height, frames)
