"""Image bombs against the running service: animated and multi-page images whose
frames x width x height is far beyond MAX_IMAGE_PIXELS (40 M here), sent as the `invert`
workflow's image in base64 and as a URL, are answered 413 from their headers and record
nothing; and an image URL redirecting to a Location httpx cannot parse is a clear 422."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support import file_server, image_bombs
from tests.support.file_server import FileServer
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: (kind, width, height, frames). The issue's: a 5.9 KB GIF of 6000x6000 with 256 one-pixel
#: frames, and a 1 KB one of 2000x2000 with 40. "moderate" ones cost only a few hundred MB to a
#: service that decodes before measuring (so the test can be run against one).
BOMBS = {
    "gif-6000x6000x256": ("gif", 6000, 6000, 256),
    "gif-2000x2000x40": ("gif", 2000, 2000, 40),
    "apng-6000x6000x256": ("apng", 6000, 6000, 256),
    "webp-6000x6000x256": ("webp", 6000, 6000, 256),
    "tiff-2000x2000x40": ("tiff", 2000, 2000, 40),
    "gif-moderate-1000x1000x50": ("gif", 1000, 1000, 50),
    "apng-moderate-1000x1000x50": ("apng", 1000, 1000, 50),
    "webp-moderate-1000x1000x50": ("webp", 1000, 1000, 50),
    "tiff-moderate-1000x1000x50": ("tiff", 1000, 1000, 50),
}


@pytest.fixture
async def image_server() -> AsyncIterator[FileServer]:
    """Serves `files`, and `redirects` with their Location header sent exactly as written."""
    async with file_server.serving() as server:
        yield server


async def submit(fleet: Fleet, image: str) -> httpx.Response:
    return await fleet.http.post("/tasks", json={"workflow": "invert", "params": {"image": image}})


@pytest.mark.parametrize("name", list(BOMBS))
@pytest.mark.parametrize("via", ["base64", "url"])
async def test_bomb_is_413_from_its_headers_and_nothing_is_recorded(
    fleet: Fleet, image_server: FileServer, name: str, via: str
) -> None:
    kind, width, height, frames = BOMBS[name]
    data = image_bombs.bomb(kind, width, height, frames)
    image_server.files[name] = data
    value = base64.b64encode(data).decode() if via == "base64" else f"{image_server.url}/{name}"
    before = await fleet.task_count()

    r = await submit(fleet, value)

    assert r.status_code == 413, (name, via, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and "params.image" in error["message"]
    detail = error["details"][0]
    assert detail["param"] == "image" and detail["limit"] == fleet.settings.max_image_pixels
    assert (detail["width"], detail["height"], detail["frames"]) == (width, height, frames)
    assert await fleet.task_count() == before
    assert image_server.hits == ([name] if via == "url" else [])


async def test_more_frames_than_the_cap_is_413(fleet: Fleet) -> None:
    before = await fleet.task_count()
    r = await submit(fleet, base64.b64encode(image_bombs.gif(1, 1, 5000)).decode())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert "more than 256 frames" in r.json()["error"]["message"]
    assert await fleet.task_count() == before


async def test_a_small_animated_image_is_still_accepted(fleet: Fleet) -> None:
    # 64x64 x 12 frames: well within the limit; it is staged (202) as it always was.
    r = await submit(fleet, base64.b64encode(image_bombs.gif(64, 64, 12)).decode())
    assert r.status_code == 202, r.text
    assert (await fleet.wait_final(r.json()["task_id"]))["status"] == "succeeded"


@pytest.mark.parametrize(
    "location", [r"http:\\169.254.169.254\x", r"http:\\127.0.0.1:1\x"]
)
async def test_a_redirect_to_a_malformed_url_is_422(
    fleet: Fleet, image_server: FileServer, location: str
) -> None:
    image_server.redirects["hop"] = location
    before = await fleet.task_count()
    r = await submit(fleet, f"{image_server.url}/hop")
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "url_forbidden" and "malformed" in error["message"]
    assert error["details"][0]["param"] == "image"
    assert image_server.hits == ["hop"]
    assert await fleet.task_count() == before
