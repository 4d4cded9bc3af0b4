from __future__ import annotations

import asyncio

from core.coalescer import Coalescer


async def test_items_added_together_go_in_one_batch_in_order() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        batches.append(items)

    c: Coalescer[int] = Coalescer(flush, window_s=0.01)
    for i in range(5):
        c.add(i)
    await c.drain()
    assert batches == [[0, 1, 2, 3, 4]]


async def test_max_batch_splits_and_a_failing_flush_does_not_stop_later_ones() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        batches.append(items)
        if len(batches) == 1:
            raise RuntimeError("boom")

    c: Coalescer[int] = Coalescer(flush, window_s=0.01, max_batch=3)
    for i in range(7):
        c.add(i)
    await c.drain()
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
    c.add(9)
    await asyncio.sleep(0.05)
    assert batches[-1] == [9]
