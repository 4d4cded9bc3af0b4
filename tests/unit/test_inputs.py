"""Image inputs: the pure checks (formats, damage, pixel limit, PNG normalisation) and staging
with an in-memory store and a URL policy that needs no network."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from comfy_fleet import errors

from comfy_fleet import storage
from comfy_fleet.policies.url_policy import UrlPolicy
from serve_app import inputs


def encoded(
    fmt: str,
    size: tuple[int, int] = (6, 4),
    mode: str = "RGB",
    colour: Any = (10, 200, 30),
    **kw: Any,
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_loadimage_format_becomes_png_of_the_same_size(fmt: str) -> None:
    png = inputs.normalise_image(encoded(fmt), max_pixels=1000, param="image")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (6, 4)


def test_lossless_input_keeps_its_pixels_and_loses_its_metadata() -> None:
    src = Image.new("RGBA", (3, 2), (1, 2, 3, 128))
    src.putpixel((2, 1), (250, 0, 7, 255))
    buf = io.BytesIO()
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("secret", "gps 1,2")
    src.save(buf, format="PNG", pnginfo=meta)
    out = Image.open(io.BytesIO(inputs.normalise_image(buf.getvalue(), max_pixels=100, param="p")))
    assert out.mode == "RGBA" and out.tobytes() == src.tobytes()
    assert "secret" not in out.info


def test_exif_orientation_is_applied_before_it_is_dropped() -> None:
    src = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    src.save(buf, format="JPEG", exif=exif.tobytes())
    out = Image.open(io.BytesIO(inputs.normalise_image(buf.getvalue(), max_pixels=100, param="p")))
    assert out.size == (2, 4)
    assert not out.getexif()


def test_cmyk_jpeg_becomes_rgb() -> None:
    out = Image.open(
        io.BytesIO(
            inputs.normalise_image(
                encoded("JPEG", mode="CMYK", colour=(0, 0, 0, 0)), max_pixels=100, param="p"
            )
        )
    )
    assert out.mode == "RGB"


def test_animated_gif_stays_animated() -> None:
    frames = [Image.new("RGB", (4, 4), (80 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = Image.open(io.BytesIO(inputs.normalise_image(buf.getvalue(), max_pixels=100, param="p")))
    assert getattr(out, "n_frames", 1) == 3


@pytest.mark.parametrize(
    "data",
    [b"plain text, not an image", b"%PDF-1.4\n", encoded("PNG")[:40], b"GIF89a" + b"\0" * 20],
    ids=["text", "pdf", "truncated-png", "broken-gif"],
)
def test_non_images_and_damaged_images_are_rejected_naming_the_param(data: bytes) -> None:
    with pytest.raises(errors.InputRejected) as info:
        inputs.normalise_image(data, max_pixels=10_000, param="photo")
    assert info.value.status == 422 and "photo" in info.value.message
    assert info.value.details == [{"param": "photo", "problem": info.value.details[0]["problem"]}]


def test_formats_loadimage_cannot_read_are_rejected() -> None:
    with pytest.raises(errors.InputRejected):
        inputs.normalise_image(encoded("ICO", size=(16, 16)), max_pixels=10_000, param="p")


def test_too_many_pixels_is_413_before_decoding() -> None:
    data = encoded("PNG", size=(101, 100))
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(data, max_pixels=10_000, param="image")
    assert info.value.status == 413 and "10100" in info.value.message
    assert inputs.normalise_image(encoded("PNG", size=(100, 100)), max_pixels=10_000, param="image")


def test_pillow_decompression_bomb_guard_stays_on() -> None:
    # A header claiming more pixels than Pillow's own guard allows: refused even with our
    # limit set higher, and without decoding anything.
    data = encoded("PNG", size=(1, 1))
    big = bytearray(data)
    # IHDR width/height live at bytes 16..24; patch them to 20000 x 20000 (400 MP), fix the CRC.
    import struct
    import zlib

    big[16:24] = struct.pack(">II", 20000, 20000)
    big[29:33] = struct.pack(">I", zlib.crc32(bytes(big[12:29])) & 0xFFFFFFFF)
    with pytest.raises(errors.PayloadTooLarge):
        inputs.normalise_image(bytes(big), max_pixels=10**12, param="p")


def test_input_key() -> None:
    assert inputs.input_key("t-1", "image") == "inputs/t-1/image.png"


# --- staging ------------------------------------------------------------------------------------


@dataclass
class Limits:
    max_image_bytes: int = 10_000
    max_image_pixels: int = 10_000
    input_fetch_timeout_s: float = 2.0


@dataclass
class Spec:
    node: str
    field: str


@dataclass
class Manifest:
    params: dict[str, Spec]


@dataclass
class Workflow:
    manifest: Manifest


@dataclass
class FakeServices:
    settings: Limits
    store: storage.InMemoryBlobStore | None
    url_policy: UrlPolicy


def services(store: storage.InMemoryBlobStore | None = None) -> FakeServices:
    return FakeServices(
        Limits(), store if store is not None else storage.InMemoryBlobStore(), UrlPolicy.build()
    )


WF = Workflow(Manifest({"a": Spec("1", "image"), "b": Spec("7", "image")}))


async def test_stage_images_stores_png_under_the_task_and_returns_inputs() -> None:
    svc = services()
    value = base64.b64encode(encoded("JPEG")).decode()
    names = {"a": "fleet/t1-a.png", "b": "fleet/t1-b.png"}
    staged = await inputs.stage_images(
        svc,
        "t1",
        WF,
        {"a": value, "b": "data:image/bmp;base64," + base64.b64encode(encoded("BMP")).decode()},
        names,
    )
    assert staged == [
        {
            "param": "a",
            "s3_key": "inputs/t1/a.png",
            "filename": "fleet/t1-a.png",
            "node": "1",
            "field": "image",
        },
        {
            "param": "b",
            "s3_key": "inputs/t1/b.png",
            "filename": "fleet/t1-b.png",
            "node": "7",
            "field": "image",
        },
    ]
    assert svc.store is not None
    for key in ("inputs/t1/a.png", "inputs/t1/b.png"):
        data, content_type = svc.store.objects[key]
        assert content_type == "image/png" and Image.open(io.BytesIO(data)).format == "PNG"


async def test_a_refused_second_image_stores_nothing() -> None:
    svc = services()
    good = base64.b64encode(encoded("PNG")).decode()
    bad = base64.b64encode(b"not an image at all").decode()
    with pytest.raises(errors.InputRejected) as info:
        await inputs.stage_images(
            svc, "t1", WF, {"a": good, "b": bad}, {"a": "x.png", "b": "y.png"}
        )
    assert "params.b" in info.value.message
    assert svc.store is not None and svc.store.objects == {}


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "url_forbidden"),
        ("http://metadata.google.internal/x.png", "url_forbidden"),
        ("http://0.0.0.0:1/x.png", "url_forbidden"),
    ],
)
async def test_forbidden_urls_are_refused_before_any_request(url: str, code: str) -> None:
    svc = services()
    with pytest.raises(errors.InvalidRequest) as info:
        await inputs.stage_images(svc, "t1", WF, {"a": url}, {"a": "x.png"})
    assert info.value.code == code and "params.a" in info.value.message
    assert info.value.details[0]["param"] == "a"


async def test_storage_outage_is_503() -> None:
    store = storage.InMemoryBlobStore()
    store.available = False
    with pytest.raises(errors.StorageUnavailable):
        await inputs.stage_images(
            services(store),
            "t1",
            WF,
            {"a": base64.b64encode(encoded("PNG")).decode()},
            {"a": "x.png"},
        )
