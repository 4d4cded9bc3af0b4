"""The pure image bound: extents read from headers (GIF blocks walked by hand), the limits'
messages, and Pillow's guard set to the same limit."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from comfy_fleet.workflows import images
from tests.support import image_bombs


@pytest.fixture(autouse=True)
def _pillow_guard_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def test_gif_extent_is_the_screen_and_the_frame_count() -> None:
    assert images.gif_extent(image_bombs.gif(6000, 4000, 7), max_frames=256) == (6000, 4000, 7)


def test_gif_extent_grows_to_hold_every_frame() -> None:
    data = image_bombs.gif(10, 10, 1, frame=(30, 5, 20, 40))
    assert images.gif_extent(data, max_frames=256) == (50, 45, 1)


def test_gif_extent_stops_counting_after_the_cap() -> None:
    assert images.gif_extent(image_bombs.gif(1, 1, 5000), max_frames=10) == (1, 1, 11)


def test_gif_extent_tolerates_what_pillow_tolerates() -> None:
    data = image_bombs.gif(4, 4, 3)
    # No trailer, and a stray byte between blocks: Pillow still reads three frames.
    mangled = data[:13 + 6] + b"\x07" + data[13 + 6 : -1]
    assert images.gif_extent(mangled, max_frames=256) == (4, 4, 3)
    assert Image.open(io.BytesIO(mangled)).n_frames == 3
    # Cut in the middle of a frame: what is there is counted, nothing is read past the end.
    assert images.gif_extent(data[:-5], max_frames=256)[2] == 3


def test_gif_extent_refuses_what_is_not_a_gif() -> None:
    with pytest.raises(SyntaxError):
        images.gif_extent(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, max_frames=4)


@pytest.mark.parametrize("kind", sorted(image_bombs.BUILDERS))
def test_measure_reads_each_format_from_its_headers(kind: str) -> None:
    data = image_bombs.bomb(kind, 300, 200, 9)
    with Image.open(io.BytesIO(data)) as img:
        extent = images.measure(img, data, max_frames=256)
        assert img.tell() == 0
    assert (extent.width, extent.height, extent.frames) == (300, 200, 9)
    assert extent.pixels == 300 * 200 * 9


def test_measure_counts_a_still_image_as_one_frame() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (7, 3)).save(buf, format="JPEG")
    with Image.open(buf) as img:
        assert images.measure(img, buf.getvalue(), max_frames=4) == images.Extent("JPEG", 7, 3, 1)


def test_a_frame_count_only_seeking_could_learn_is_uncountable() -> None:
    class Lazy(Image.Image):
        format = "LAZY"

        @property
        def n_frames(self) -> int:
            raise AssertionError("counting by seeking")

    with pytest.raises(images.Uncountable):
        images.measure(Lazy(), b"", max_frames=4)


def test_excess_names_the_problem() -> None:
    assert images.excess(images.Extent("GIF", 100, 100, 1), max_pixels=10_000, max_frames=4) is None
    over = images.excess(images.Extent("GIF", 100, 100, 2), max_pixels=10_000, max_frames=4)
    assert over == "image is 100x100 x 2 frames = 20000 pixels; the limit is 10000"
    still = images.excess(images.Extent("PNG", 101, 100, 1), max_pixels=10_000, max_frames=4)
    assert still == "image is 101x100 = 10100 pixels; the limit is 10000"
    many = images.excess(images.Extent("GIF", 1, 1, 5), max_pixels=10_000, max_frames=4)
    assert many is not None and "more than 4 frames" in many


def test_guard_pillow_sets_the_limit_and_makes_the_warning_an_error() -> None:
    with warnings.catch_warnings():
        warnings.resetwarnings()
        images.guard_pillow(500)
        images.guard_pillow(500)
        assert Image.MAX_IMAGE_PIXELS == 500
        errors = [f for f in warnings.filters if f[2] is Image.DecompressionBombWarning]
        assert len(errors) == 1 and errors[0][0] == "error"
        buf = io.BytesIO()
        Image.new("L", (30, 20)).save(buf, format="PNG")
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(buf)
