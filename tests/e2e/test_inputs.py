"""Image inputs end to end: base64 and URL images through the shipped `invert` workflow, and every
kind of refusal (bad base64, not an image, too many bytes or pixels, forbidden URLs and
redirects), each recording nothing."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import file_server, image_bombs
from tests.support.file_server import FileServer
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]


def sample_image() -> Image.Image:
    """A small RGB image with distinct pixels (a gradient and a few pure colours)."""
    img = Image.new("RGB", (12, 7))
    for x in range(12):
        for y in range(7):
            img.putpixel((x, y), (x * 21, y * 36, (x * y * 7) % 256))
    img.putpixel((0, 0), (255, 255, 255))
    img.putpixel((1, 0), (128, 0, 64))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def inverted_as_comfyui(img: Image.Image) -> np.ndarray:
    """What LoadImage → ImageInvert → SaveImage make of `img`: float32 maths, then truncation."""
    x = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return np.clip(255.0 * (1.0 - x), 0, 255).astype(np.uint8)


@pytest.fixture
async def image_server() -> AsyncIterator[FileServer]:
    """Serves PNGs; `/endless` is a body without end (no Content-Length)."""
    async with file_server.serving(content_type="image/png") as server:
        server.endless.add("endless")
        yield server


async def run_invert(fleet: Fleet, image_value: str) -> dict:
    r = await fleet.http.post(
        "/tasks", json={"workflow": "invert", "params": {"image": image_value}}
    )
    assert r.status_code == 202, r.text
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    return final


async def output_pixels(task: dict) -> np.ndarray:
    assert len(task["outputs"]) == 1
    async with httpx.AsyncClient() as plain:
        blob = (await plain.get(task["outputs"][0]["url"])).content
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


async def test_base64_image_is_inverted(fleet: Fleet) -> None:
    img = sample_image()
    final = await run_invert(fleet, base64.b64encode(png_bytes(img)).decode())
    assert np.array_equal(await output_pixels(final), inverted_as_comfyui(img))
    # The image was kept under the task (and staged as PNG for the upload); the stored
    # request holds no image bytes.
    evs = (await fleet.http.get(f"/tasks/{final['task_id']}/events")).json()
    submitted = evs[0]["data"]
    assert submitted["params"]["image"] == "<image>"
    assert submitted["inputs"][0]["upload_key"] == f"inputs/{final['task_id']}/image.png"
    assert submitted["inputs"][0]["s3_key"] == f"tasks/{final['task_id']}/inputs/image"
    assert submitted["inputs"][0]["filename"] == f"fleet/{final['task_id']}-image.png"


async def test_data_url_jpeg_is_accepted(fleet: Fleet) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(buf, format="JPEG", quality=95)
    final = await run_invert(
        fleet, "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    )
    pixels = await output_pixels(final)
    assert pixels.shape == (8, 8, 3) and int(pixels.min()) >= 250  # black, inverted


async def test_url_image_is_fetched_and_inverted(fleet: Fleet, image_server: FileServer) -> None:
    img = sample_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image_server.files["cat.png"] = png_bytes(img)
    final = await run_invert(fleet, f"{image_server.url}/cat.png")
    assert image_server.hits == ["cat.png"]
    assert np.array_equal(await output_pixels(final), inverted_as_comfyui(img))


async def refused(fleet: Fleet, value: str) -> httpx.Response:
    return await fleet.http.post("/tasks", json={"workflow": "invert", "params": {"image": value}})


async def test_bad_images_are_refused_and_nothing_is_recorded(
    fleet: Fleet, image_server: FileServer
) -> None:
    before = await fleet.task_count()
    image_server.files["notes.txt"] = b"these are my notes, not a picture"
    image_server.files["huge.png"] = image_bombs.png_header(7000, 6000)

    cases = [
        ("not base64 !!", 422, "params_invalid"),
        (base64.b64encode(b"GIF89a but not really a gif").decode(), 422, "input_rejected"),
        (base64.b64encode(png_bytes(sample_image())[:60]).decode(), 422, "input_rejected"),
        (f"{image_server.url}/notes.txt", 422, "input_rejected"),
        (f"{image_server.url}/missing.png", 422, "input_rejected"),
        (base64.b64encode(image_bombs.png_header(7000, 6000)).decode(), 413, "payload_too_large"),
        (f"{image_server.url}/huge.png", 413, "payload_too_large"),
        (f"{image_server.url}/endless", 413, "payload_too_large"),
    ]
    for value, status, code in cases:
        r = await refused(fleet, value)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (value[:60], r.text)
        assert "image" in r.json()["error"]["message"]
    assert await fleet.task_count() == before


async def test_forbidden_urls_are_refused_and_nothing_is_recorded(
    fleet: Fleet, image_server: FileServer
) -> None:
    before = await fleet.task_count()
    standin = fleet.standins[0]
    image_server.redirects["to-metadata"] = "http://169.254.169.254/latest/meta-data/iam"
    image_server.redirects["to-standin"] = f"{standin.url}/view?filename=x.png&type=input"
    for value in (
        "http://169.254.169.254/latest/meta-data/",
        f"{standin.url}/view?filename=x.png&type=input",
        f"http://localhost:{standin.url.rsplit(':', 1)[1]}/view?filename=x.png",
        f"{image_server.url}/to-metadata",
        f"{image_server.url}/to-standin",
    ):
        r = await refused(fleet, value)
        assert r.status_code == 422 and r.json()["error"]["code"] == "url_forbidden", (
            value,
            r.text,
        )
        assert r.json()["error"]["details"][0]["param"] == "image"
    # The redirects were asked for; their forbidden targets never were.
    assert image_server.hits == ["to-metadata", "to-standin"]
    assert await fleet.task_count() == before
