"""Image inputs: the pure checks (formats, damage, pixel limit, PNG normalisation) and staging
with an in-memory store and a URL policy that needs no network."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from comfy_fleet import errors

from comfy_fleet import storage
from comfy_fleet.policies.url_policy import UrlPolicy
from serve_app import inputs
from tests.support import image_bombs


@pytest.fixture(autouse=True)
def _pillow_guard_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # normalise_image sets Pillow's process-wide guard to each test's limit; other test modules
    # of the same run open images with Pillow's default.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


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


def test_a_header_over_the_limit_is_413_without_decoding() -> None:
    data = encoded("PNG", size=(1, 1))
    big = bytearray(data)
    # IHDR width/height live at bytes 16..24; patch them to 20000 x 20000 (400 MP), fix the CRC.
    import struct
    import zlib

    big[16:24] = struct.pack(">II", 20000, 20000)
    big[29:33] = struct.pack(">I", zlib.crc32(bytes(big[12:29])) & 0xFFFFFFFF)
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(bytes(big), max_pixels=10**8, param="p")
    assert info.value.details[0]["limit"] == 10**8


# --- animated and multi-page bombs ---------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make decoding a pixel of any frame fail the test: refusals must come from headers."""

    def decoded(self: Image.Image, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a {self.format} frame was decoded")

    from PIL import ImageFile, TiffImagePlugin, WebPImagePlugin

    for cls in (ImageFile.ImageFile, TiffImagePlugin.TiffImageFile, WebPImagePlugin.WebPImageFile):
        monkeypatch.setattr(cls, "load", decoded)


@pytest.mark.parametrize("kind", sorted(image_bombs.BUILDERS))
def test_frames_times_pixels_over_the_limit_is_413(kind: str) -> None:
    # Every frame is within the limit (100 x 100 = 10000); the five frames together are not.
    data = image_bombs.bomb(kind, 100, 100, 5)
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(data, max_pixels=10_000, param="image")
    assert info.value.status == 413 and info.value.code == "payload_too_large"
    assert "params.image" in info.value.message and "5 frames" in info.value.message
    detail = info.value.details[0]
    assert {k: detail[k] for k in ("param", "width", "height", "frames", "limit")} == {
        "param": "image", "width": 100, "height": 100, "frames": 5, "limit": 10_000
    }


@pytest.mark.parametrize(
    ("kind", "width", "height", "frames"),
    [
        ("gif", 6000, 6000, 256),  # 5.9 KB; 9.2 G pixels decoded
        ("gif", 2000, 2000, 40),  # under 1 KB
        ("apng", 6000, 6000, 256),
        ("webp", 6000, 6000, 256),
        ("tiff", 2000, 2000, 40),
    ],
)
def test_bombs_are_refused_from_their_headers_without_decoding(
    no_decoding: None, kind: str, width: int, height: int, frames: int
) -> None:
    data = image_bombs.bomb(kind, width, height, frames)
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(data, max_pixels=40_000_000, param="image")
    detail = info.value.details[0]
    assert (detail["width"], detail["height"], detail["frames"]) == (width, height, frames)


def test_more_frames_than_the_cap_is_413_after_counting_no_further() -> None:
    data = image_bombs.gif(1, 1, 10_000)
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(data, max_pixels=10**9, param="image")
    assert f"more than {inputs.MAX_FRAMES} frames" in info.value.message
    assert info.value.details[0]["frames"] == inputs.MAX_FRAMES + 1


def test_an_apng_declaring_two_billion_frames_is_refused(no_decoding: None) -> None:
    data = bytearray(image_bombs.apng(1, 1, 1))
    # acTL follows the 8-byte signature and the 25-byte IHDR chunk.
    import struct
    import zlib

    body = struct.pack(">II", 2**31 - 1, 0)
    data[33 + 8 : 33 + 16] = body
    data[33 + 16 : 33 + 20] = struct.pack(">I", zlib.crc32(b"acTL" + body))
    with pytest.raises(errors.PayloadTooLarge):
        inputs.normalise_image(bytes(data), max_pixels=10**9, param="image")


def test_a_gif_frame_growing_the_canvas_counts_at_its_grown_size() -> None:
    # The screen says 10x10; the third frame is 120x120, which Pillow would grow the canvas to.
    small = image_bombs.gif(10, 10, 2)
    grown = image_bombs.gif(10, 10, 1, frame=(0, 0, 120, 120))
    data = small[:-1] + grown[grown.index(b"!\xf9") :]
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(data, max_pixels=10_000, param="image")
    assert (info.value.details[0]["width"], info.value.details[0]["frames"]) == (120, 3)


def test_tiff_pages_count_at_the_largest_page() -> None:
    pages = [Image.new("L", (10, 10)), Image.new("L", (90, 90))]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(buf.getvalue(), max_pixels=10_000, param="image")
    assert (info.value.details[0]["width"], info.value.details[0]["frames"]) == (90, 2)


def test_mpo_frames_are_counted() -> None:
    frames = [Image.new("RGB", (100, 100), (i * 90, 0, 0)) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    with pytest.raises(errors.PayloadTooLarge) as info:
        inputs.normalise_image(buf.getvalue(), max_pixels=10_000, param="image")
    assert info.value.details[0]["frames"] == 2
    png = inputs.normalise_image(buf.getvalue(), max_pixels=20_000, param="p")
    out = Image.open(io.BytesIO(png))
    assert getattr(out, "n_frames", 1) == 2


def frames_of(data: bytes) -> list[bytes]:
    with Image.open(io.BytesIO(data)) as img:
        out = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            out.append(img.convert("RGBA").tobytes())
        return out


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_animated_inputs_within_the_limit_keep_every_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 6), (40 * i, 255 - 40 * i, 7 * i)) for i in range(5)]
    buf = io.BytesIO()
    extra: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=40, **extra)
    png = inputs.normalise_image(buf.getvalue(), max_pixels=8 * 6 * 5, param="p")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert frames_of(png) == frames_of(buf.getvalue())


def test_pillow_guard_follows_the_limit() -> None:
    inputs.normalise_image(encoded("PNG", size=(10, 10)), max_pixels=10_000, param="p")
    assert Image.MAX_IMAGE_PIXELS == 10_000
    # Anything else opening an image in this process is held to the same limit, as an error.
    with pytest.raises(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(encoded("PNG", size=(101, 100))))


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


async def test_stage_images_keeps_the_bytes_received_and_a_png_to_upload() -> None:
    svc = services()
    jpeg, bmp = encoded("JPEG"), encoded("BMP")
    names = {"a": "fleet/t1-a.png", "b": "fleet/t1-b.png"}
    staged = await inputs.stage_images(
        svc,
        "t1",
        WF,
        {"a": base64.b64encode(jpeg).decode(),
         "b": "data:image/bmp;base64," + base64.b64encode(bmp).decode()},
        names,
    )
    assert staged == [
        {
            "param": "a",
            "s3_key": "tasks/t1/inputs/a",
            "sha256": hashlib.sha256(jpeg).hexdigest(),
            "content_type": "image/jpeg",
            "size": len(jpeg),
            "upload_key": "inputs/t1/a.png",
            "filename": "fleet/t1-a.png",
            "node": "1",
            "field": "image",
        },
        {
            "param": "b",
            "s3_key": "tasks/t1/inputs/b",
            "sha256": hashlib.sha256(bmp).hexdigest(),
            "content_type": "image/bmp",
            "size": len(bmp),
            "upload_key": "inputs/t1/b.png",
            "filename": "fleet/t1-b.png",
            "node": "7",
            "field": "image",
        },
    ]
    assert svc.store is not None
    for key in ("inputs/t1/a.png", "inputs/t1/b.png"):
        data, content_type = svc.store.objects[key]
        assert content_type == "image/png" and Image.open(io.BytesIO(data)).format == "PNG"
    assert svc.store.objects["tasks/t1/inputs/a"] == (jpeg, "image/jpeg")
    assert svc.store.objects["tasks/t1/inputs/b"] == (bmp, "image/bmp")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_received_type_of_each_loadimage_format(fmt: str) -> None:
    assert inputs.received_type(encoded(fmt)) == f"image/{fmt.lower()}"


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
