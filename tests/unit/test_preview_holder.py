"""PreviewHolder (actors/endpoint_previews.py): the latest preview per task, long-polled by
version; one image per task, dropped with its prompt; no waiter left behind. No I/O."""

from __future__ import annotations

import asyncio

import pytest

from actors.endpoint_previews import PREVIEW_MAX_BYTES, PreviewHolder

pytestmark = pytest.mark.timeout(10)

HELD = lambda: True  # noqa: E731
NOT_HELD = lambda: False  # noqa: E731


async def test_only_the_latest_preview_of_a_task_is_kept() -> None:
    h = PreviewHolder()
    h.put("t", "image/jpeg", b"one")
    h.put("t", "image/jpeg", b"two")
    h.put("u", "image/png", b"other")
    assert len(h) == 2
    latest = h.latest("t")
    assert latest is not None and latest.data == b"two"
    assert latest.answer() == {"version": latest.version, "content_type": "image/jpeg", "data": b"two"}


async def test_a_preview_newer_than_the_watchers_comes_at_once() -> None:
    h = PreviewHolder()
    h.put("t", "image/jpeg", b"one")
    first = await h.next("t", 0, 5, HELD)
    assert first is not None and first.data == b"one"
    # the same version again: it waits for the next one, which a put brings
    waiting = asyncio.create_task(h.next("t", first.version, 5, HELD))
    await asyncio.sleep(0)
    assert h.watchers() == 1
    h.put("t", "image/jpeg", b"two")
    second = await waiting
    assert second is not None and second.data == b"two" and second.version != first.version
    assert h.watchers() == 0


async def test_a_watcher_gets_nothing_when_none_comes_within_its_timeout() -> None:
    h = PreviewHolder()
    assert await h.next("t", 0, 0.01, HELD) is None
    assert h.watchers() == 0


async def test_the_end_of_the_prompt_wakes_its_watchers_with_nothing() -> None:
    h = PreviewHolder()
    h.put("t", "image/jpeg", b"one")
    version = h.latest("t").version  # type: ignore[union-attr]
    waiting = asyncio.create_task(h.next("t", version, 5, HELD))
    await asyncio.sleep(0)
    h.drop("t")
    assert await waiting is None
    assert len(h) == 0 and h.watchers() == 0


async def test_a_task_not_held_here_answers_nothing_at_once_and_is_forgotten() -> None:
    h = PreviewHolder()
    h.put("t", "image/jpeg", b"one")
    version = h.latest("t").version  # type: ignore[union-attr]
    assert await h.next("t", version, 5, NOT_HELD) is None
    assert len(h) == 0


async def test_a_restarted_counter_still_answers_a_preview_whose_version_differs() -> None:
    h = PreviewHolder()  # a new actor life counts from 1 again
    h.put("t", "image/jpeg", b"one")
    found = await h.next("t", 7, 5, HELD)  # the watcher had version 7 from the last life
    assert found is not None and found.data == b"one"


async def test_keep_only_drops_the_tasks_no_longer_held() -> None:
    h = PreviewHolder()
    h.put("t", "image/jpeg", b"1")
    h.put("u", "image/jpeg", b"2")
    h.keep_only({"u": "prompt"})
    assert h.latest("t") is None and h.latest("u") is not None


async def test_an_oversized_frame_is_not_kept() -> None:
    h = PreviewHolder()
    h.put("t", "image/png", b"\0" * (PREVIEW_MAX_BYTES + 1))
    assert len(h) == 0
