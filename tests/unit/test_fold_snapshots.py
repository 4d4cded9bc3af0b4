"""FoldSnapshots (actors/fold_snapshots.py): the loop that refreshes the fold snapshot while the
service runs. No Ray, no I/O: the refresh is a fake."""

from __future__ import annotations

import asyncio

from actors.fold_snapshots import FoldSnapshots
from tests.support.polling import eventually


async def test_it_refreshes_every_period_and_a_failure_does_not_stop_it() -> None:
    calls: list[int] = []

    async def refresh() -> str:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return "fold snapshot: 3 task(s)"

    loop = FoldSnapshots(0.02, refresh, jitter=lambda: 0.5)
    loop.start()
    try:
        await eventually(lambda: len(calls) >= 4, what="four refreshes")
    finally:
        await loop.stop()
    assert loop.failed == 1 and loop.done >= 3


async def test_an_interval_of_zero_never_refreshes() -> None:
    calls: list[int] = []

    async def refresh() -> str:
        calls.append(1)
        return ""

    loop = FoldSnapshots(0.0, refresh)
    loop.start()
    await asyncio.sleep(0.05)
    await loop.stop()
    assert calls == [] and loop.done == 0
