"""process_heap.settle: once per process, it freezes what exists and spaces young collections
out; later calls change nothing. The test puts the collector back as it found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from comfy_fleet import process_heap


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    process_heap._settled = False
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    process_heap._settled = False
    assert frozen_before == 0  # nothing else in the test process froze anything


def test_settle_freezes_once_and_spaces_young_collections(collector: None) -> None:
    before = gc.get_threshold()
    process_heap.settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert gc.get_threshold() == (process_heap.YOUNG_THRESHOLD, before[1], before[2])

    made_later = [[] for _ in range(1000)]  # objects of the running service: never frozen
    process_heap.settle()
    assert gc.get_freeze_count() == frozen
    assert len(made_later) == 1000
