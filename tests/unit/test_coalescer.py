from __future__ import annotations

import asyncio

from comfy_fleet.log.coalescer import Coalescer


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


async def test_a_lone_item_goes_at_once_and_items_wait_the_window_while_a_batch_travels() -> None:
    batches: list[list[int]] = []
    travelling = asyncio.Event()
    arrive = asyncio.Event()

    async def flush(items: list[int]) -> None:
        batches.append(items)
        travelling.set()
        await arrive.wait()

    c: Coalescer[int] = Coalescer(flush, window_s=3600)  # a window no test would wait out
    c.add(1)
    await asyncio.wait_for(travelling.wait(), 1)  # idle: sent at the next turn of the loop
    assert batches == [[1]]
    c.add(2)
    c.add(3)
    for _ in range(5):
        await asyncio.sleep(0)
    assert batches == [[1]]  # busy: 2 and 3 wait for the window (or a drain)
    arrive.set()
    await c.drain()
    assert batches == [[1], [2, 3]]
