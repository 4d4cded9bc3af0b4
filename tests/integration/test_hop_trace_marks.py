"""hop_trace.mark writes one line per mark to its process's file, and nothing when off."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_fleet import hop_trace


@pytest.fixture
def reset() -> Iterator[None]:
    yield
    if hop_trace._out is not None:
        hop_trace._out.close()
    hop_trace._out = None
    hop_trace._dir = None


def test_marks_go_to_the_process_file_and_read_back_as_passes(
    tmp_path: Path, reset: None
) -> None:
    hop_trace._dir = str(tmp_path / "hops")
    first, second = hop_trace.HOPS[0][0], hop_trace.HOPS[1][0]
    hop_trace.mark(first, "t1")
    hop_trace.mark(second, "t1")
    assert os.listdir(tmp_path / "hops") == [f"{os.getpid()}.log"]
    seen = hop_trace.passes(hop_trace.read(str(tmp_path / "hops")))
    assert list(seen) == ["t1"] and seen["t1"][first] <= seen["t1"][second]


def test_off_writes_nothing(tmp_path: Path, reset: None) -> None:
    hop_trace._dir = None
    hop_trace.mark(hop_trace.HOPS[0][0], "t1")
    assert hop_trace._out is None and list(tmp_path.iterdir()) == []
