"""RankedList: a sorted collection of unique, comparable items that also answers an item's rank.

The waiting tasks of one tenant live in one, so that the router can take the first task that fits
and the API can tell a task's place in line. A heap gives neither the rank nor an in-order scan
without popping, and the standard library has no balanced tree; this is the blocked sorted list
of the `sortedcontainers` package, reduced to what we use: the items are kept in sorted blocks of
at most `2 * LOAD`, with each block's largest item in `maxes`. Finding an item's block is a
bisection (O(log n)); inserting or deleting within a block moves at most `2 * LOAD` pointers; a
rank adds up the sizes of the blocks before it (n / LOAD of them, 40 for 10,000 items).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Any)

#: Half the largest block: a block of 2 * LOAD items is split in two.
LOAD = 256


class RankedList(Generic[T]):
    def __init__(self) -> None:
        self._blocks: list[list[T]] = []
        self._maxes: list[T] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        for block in self._blocks:
            yield from block

    def __contains__(self, item: object) -> bool:
        i = bisect.bisect_left(self._maxes, item)
        if i == len(self._maxes):
            return False
        block = self._blocks[i]
        j = bisect.bisect_left(block, item)
        return j < len(block) and block[j] == item

    def first(self) -> T:
        """The smallest item; IndexError when empty."""
        return self._blocks[0][0]

    def add(self, item: T) -> None:
        """Insert `item` (the caller keeps items unique)."""
        if not self._blocks:
            self._blocks.append([item])
            self._maxes.append(item)
            self._len = 1
            return
        i = bisect.bisect_left(self._maxes, item)
        if i == len(self._maxes):
            i -= 1  # larger than everything: goes at the end of the last block
        block = self._blocks[i]
        bisect.insort(block, item)
        self._maxes[i] = block[-1]
        self._len += 1
        if len(block) > 2 * LOAD:
            self._blocks[i : i + 1] = [block[:LOAD], block[LOAD:]]
            self._maxes[i : i + 1] = [block[LOAD - 1], block[-1]]

    def remove(self, item: T) -> bool:
        """Remove `item`; False when it is not held."""
        i = bisect.bisect_left(self._maxes, item)
        if i == len(self._maxes):
            return False
        block = self._blocks[i]
        j = bisect.bisect_left(block, item)
        if j == len(block) or block[j] != item:
            return False
        del block[j]
        self._len -= 1
        if block:
            self._maxes[i] = block[-1]
        else:
            del self._blocks[i]
            del self._maxes[i]
        return True

    def index(self, item: T) -> int:
        """The 0-based rank of a held `item`; ValueError when it is not held."""
        i = bisect.bisect_left(self._maxes, item)
        if i < len(self._maxes):
            block = self._blocks[i]
            j = bisect.bisect_left(block, item)
            if j < len(block) and block[j] == item:
                return sum(len(b) for b in self._blocks[:i]) + j
        raise ValueError("item not held")
