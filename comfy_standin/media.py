"""Small valid media files for the simulated savers (no codecs needed).

WebM: a real VP8 key frame per image, taken from Pillow's lossy WebP encoder and wrapped in a
minimal Matroska container. MP4: an ISO-BMFF skeleton (ftyp + moov/mvhd + empty mdat).
WAV: PCM silence. GLB: an empty glTF 2.0 binary. Safetensors: a header-only file.
"""

from __future__ import annotations

import io
import json
import struct
import wave

from PIL import Image


def _el(eid: int, payload: bytes) -> bytes:
    ident = eid.to_bytes((eid.bit_length() + 7) // 8, "big")
    return ident + b"\x01" + len(payload).to_bytes(7, "big")


def _uint(eid: int, value: int) -> bytes:
    data = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return _el(eid, data) + data


def _str(eid: int, value: str) -> bytes:
    data = value.encode()
    return _el(eid, data) + data


def _node(eid: int, *children: bytes) -> bytes:
    payload = b"".join(children)
    return _el(eid, payload) + payload


def _vp8_frame(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="WEBP", quality=50, lossless=False)
    data = buf.getvalue()
    pos = 12
    while pos + 8 <= len(data):
        fourcc, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if fourcc == b"VP8 ":
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise ValueError("Pillow produced no VP8 chunk")


def webm(frames: list[Image.Image], fps: float) -> bytes:
    """A WebM (VP8) with one key frame per image."""
    w, h = frames[0].size
    frame_ms = max(1, round(1000 / max(fps, 0.01)))
    header = _node(
        0x1A45DFA3,
        _uint(0x4286, 1),
        _uint(0x42F7, 1),
        _uint(0x42F2, 4),
        _uint(0x42F3, 8),
        _str(0x4282, "webm"),
        _uint(0x4287, 2),
        _uint(0x4285, 2),
    )
    duration = struct.pack(">d", float(frame_ms * len(frames)))
    info = _node(
        0x1549A966,
        _uint(0x2AD7B1, 1_000_000),
        _str(0x4D80, "comfy_standin"),
        _str(0x5741, "comfy_standin"),
        _el(0x4489, duration) + duration,
    )
    track = _node(
        0xAE,
        _uint(0xD7, 1),
        _uint(0x73C5, 1),
        _uint(0x83, 1),
        _str(0x86, "V_VP8"),
        _node(0xE0, _uint(0xB0, w), _uint(0xBA, h)),
    )
    blocks = []
    for i, frame in enumerate(frames):
        vp8 = _vp8_frame(frame.resize((w, h)))
        payload = b"\x81" + struct.pack(">hB", i * frame_ms, 0x80) + vp8
        blocks.append(_el(0xA3, payload) + payload)
    cluster = _node(0x1F43B675, _uint(0xE7, 0), *blocks)
    return header + _node(0x18538067, info, _node(0x1654AE6B, track), cluster)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4_skeleton(duration_ms: int = 1000) -> bytes:
    """An ISO-BMFF file with no tracks: parses as MP4, plays nothing."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    mvhd = _box(
        b"mvhd",
        struct.pack(">IIIII", 0, 0, 0, 1000, duration_ms)
        + struct.pack(">IH", 0x00010000, 0x0100)
        + b"\x00" * 10
        + struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
        + b"\x00" * 24
        + struct.pack(">I", 2),
    )
    return ftyp + _box(b"moov", mvhd) + _box(b"mdat", b"")


def wav_silence(seconds: float = 0.1, rate: int = 44100) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


def glb_empty() -> bytes:
    doc = json.dumps({"asset": {"version": "2.0", "generator": "comfy_standin"}}).encode()
    doc += b" " * (-len(doc) % 4)
    chunk = struct.pack("<I4s", len(doc), b"JSON") + doc
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunk)) + chunk


def safetensors_empty(metadata: dict[str, str] | None = None) -> bytes:
    header = json.dumps({"__metadata__": metadata or {}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def svg(width: int = 64, height: int = 64) -> bytes:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="{width}" height="{height}" fill="#808080"/></svg>'
    ).encode()
