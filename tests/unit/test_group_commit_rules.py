"""GroupCommit's rules, with senders that record what they were given (no database)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from comfy_fleet import errors
from comfy_fleet.log.group_commit import GroupCommit


class Senders:
    """Records each statement; `fail_many` makes a group's statement fail, `bad` names the
    appends that fail alone too."""

    def __init__(
        self, *, fail_many: BaseException | None = None, bad: frozenset[str] = frozenset()
    ) -> None:
        self.statements: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_many = fail_many
        self.bad = bad

    async def one(self, args: str) -> str:
        self.statements.append([args])
        await self.gate.wait()
        if args in self.bad:
            raise errors.ConcurrencyConflict(f"{args} is taken")
        return f"ok {args}"

    async def many(self, args: Sequence[str]) -> list[str]:
        self.statements.append(list(args))
        await self.gate.wait()
        if self.fail_many is not None:
            raise self.fail_many
        return [f"ok {a}" for a in args]


async def burst(
    s: Senders, g: GroupCommit[str, str], appends: list[tuple[str, str]],
) -> tuple[asyncio.Task[str], list[asyncio.Task[str]]]:
    """An append ("t1", "a") in flight (held at the gate), then `appends` (key, args) submitted
    meanwhile; the gate opens once the caller has done what it needs meanwhile."""
    s.gate.clear()
    first = asyncio.create_task(g.submit("t1", "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(g.submit(k, a)) for k, a in appends]
    await asyncio.sleep(0)
    return first, rest


async def test_an_append_alone_is_sent_alone_at_once() -> None:
    s = Senders()
    g = GroupCommit(s.one, s.many)
    assert await g.submit("t1", "a") == "ok a"
    assert s.statements == [["a"]]


async def test_appends_arriving_during_a_statement_go_together_in_the_next() -> None:
    s = Senders()
    g = GroupCommit(s.one, s.many)
    first, rest = await burst(s, g, [(f"t{i}", f"x{i}") for i in range(2, 6)])
    s.gate.set()
    assert await first == "ok a"
    assert await asyncio.gather(*rest) == [f"ok x{i}" for i in range(2, 6)]
    assert s.statements == [["a"], ["x2", "x3", "x4", "x5"]]
    assert (g.statements, g.appends) == (2, 5)


async def test_one_task_is_never_twice_in_a_statement_and_groups_are_bounded() -> None:
    s = Senders()
    g = GroupCommit(s.one, s.many, max_group=3)
    keys = ["t1", "t2", "t1", "t3", "t4", "t5"]
    first, rest = await burst(s, g, [(k, f"{k}#{i}") for i, k in enumerate(keys)])
    s.gate.set()
    await asyncio.gather(first, *rest)
    assert s.statements[1] == ["t1#0", "t2#1", "t3#3"]  # the second t1 waits for the next
    assert s.statements[2] == ["t1#2", "t4#4", "t5#5"]


async def test_a_failed_group_sends_each_alone_and_each_caller_gets_its_own_result() -> None:
    s = Senders(fail_many=errors.ConcurrencyConflict("someone's seq is taken"), bad={"x3"})
    g = GroupCommit(s.one, s.many)
    first, rest = await burst(s, g, [(f"t{i}", f"x{i}") for i in range(2, 5)])
    s.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert results[:2] == ["ok a", "ok x2"] and results[3] == "ok x4"
    assert isinstance(results[2], errors.ConcurrencyConflict) and "x3" in str(results[2])
    assert s.statements == [["a"], ["x2", "x3", "x4"], ["x2"], ["x3"], ["x4"]]


async def test_an_unreachable_database_fails_every_append_of_the_group_without_retrying() -> None:
    s = Senders(fail_many=errors.DatabaseUnavailable("database unavailable"))
    g = GroupCommit(s.one, s.many)
    first, rest = await burst(s, g, [(f"t{i}", f"x{i}") for i in range(2, 4)])
    s.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert results[0] == "ok a"
    assert all(isinstance(r, errors.DatabaseUnavailable) for r in results[1:])
    assert len(s.statements) == 2


async def test_a_caller_that_gave_up_before_its_group_left_is_not_sent() -> None:
    s = Senders()
    g = GroupCommit(s.one, s.many)
    first, (gone, kept) = await burst(s, g, [("t2", "gone"), ("t3", "kept")])
    gone.cancel()
    s.gate.set()
    assert await first == "ok a" and await kept == "ok kept"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert s.statements == [["a"], ["kept"]]


def test_bounds_are_checked() -> None:
    async def never(_: object) -> object:
        raise AssertionError

    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(never, never, max_in_flight=0)
