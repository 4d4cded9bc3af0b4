"""GroupCommit: one process's appends to the log, several to a statement when they come together.

An append that finds fewer than `max_in_flight` statements of this process in flight is sent
at once, alone, as before: one task at a time pays no wait. Appends that arrive while that many
are in flight wait for one to return and then go together, as one statement and one commit
(PostgreSQL's cost of an append is mostly its statement and its commit, not its rows). That is
group commit, as databases do it for their own log.

The contract to callers is that of sending their append alone: each caller gets its own
append's result or its own error. A group never holds one key (task) twice, so two appends of
one task are never in one statement. When a group's statement fails, nothing of it was stored
(one statement is one transaction), and each of its appends is sent alone to find whose the
error was, except when the database was unreachable: then every caller gets that error, as
each would have alone.

No database here: the two senders are given. `one(args)` sends one append; `many(args_list)`
sends several and returns one result each, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from comfy_fleet import errors

A = TypeVar("A")
R = TypeVar("R")

#: The most appends one statement holds (bounded so a backlog does not make one huge statement).
MAX_GROUP = 64


@dataclass
class _Waiting(Generic[A, R]):
    key: str
    args: A
    result: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[A, R]):
    """Sends appends with at most `max_in_flight` statements of this process in flight."""

    def __init__(
        self,
        one: Callable[[A], Awaitable[R]],
        many: Callable[[Sequence[A]], Awaitable[Sequence[R]]],
        *,
        max_in_flight: int = 1,
        max_group: int = MAX_GROUP,
    ) -> None:
        if max_in_flight < 1 or max_group < 1:
            raise ValueError("max_in_flight and max_group must be at least 1")
        self._one = one
        self._many = many
        self._max_in_flight = max_in_flight
        self._max_group = max_group
        self._in_flight = 0
        self._waiting: list[_Waiting[A, R]] = []
        self._senders: set[asyncio.Task[None]] = set()
        #: statements sent, and appends in them (read by the tests)
        self.statements = 0
        self.appends = 0

    async def submit(self, key: str, args: A) -> R:
        """Send one append (of the stream `key`) and return its result, or raise its error."""
        if self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1
            self.statements += 1
            self.appends += 1
            try:
                return await self._one(args)
            finally:
                self._in_flight -= 1
                self._start_groups()
        waiting: _Waiting[A, R] = _Waiting(key, args)
        self._waiting.append(waiting)
        self._start_groups()
        return await waiting.result

    def _start_groups(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            group = self._take_group()
            if not group:
                return
            self._in_flight += 1
            sender = asyncio.get_running_loop().create_task(self._send(group))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    def _take_group(self) -> list[_Waiting[A, R]]:
        """The oldest waiting appends, one per key, up to `max_group`; callers that gave up
        (cancelled) are dropped, the rest keep their order."""
        group: list[_Waiting[A, R]] = []
        keys: set[str] = set()
        rest: list[_Waiting[A, R]] = []
        for w in self._waiting:
            if w.result.done():
                continue
            if len(group) < self._max_group and w.key not in keys:
                group.append(w)
                keys.add(w.key)
            else:
                rest.append(w)
        self._waiting = rest
        return group

    async def _send(self, group: list[_Waiting[A, R]]) -> None:
        try:
            self.statements += 1
            self.appends += len(group)
            if len(group) == 1:
                await self._settle(group[0], self._one(group[0].args))
                return
            try:
                results = await self._many([w.args for w in group])
            except errors.DatabaseUnavailable as exc:
                for w in group:
                    _set_error(w, exc)
                return
            except Exception:
                # Nothing of the group was stored: each alone tells whose the error was.
                for w in group:
                    self.statements += 1
                    await self._settle(w, self._one(w.args))
                return
            for w, r in zip(group, results, strict=True):
                if not w.result.done():
                    w.result.set_result(r)
        finally:
            for w in group:
                # Only when this sender itself was cancelled (the loop shutting down).
                w.result.cancel()
            self._in_flight -= 1
            self._start_groups()

    async def _settle(self, w: _Waiting[A, R], sending: Awaitable[R]) -> None:
        try:
            r = await sending
        except Exception as exc:  # noqa: BLE001 - handed to its caller, who raises it
            _set_error(w, exc)
        else:
            if not w.result.done():
                w.result.set_result(r)


def _set_error(w: _Waiting[A, R], exc: BaseException) -> None:
    if not w.result.done():
        w.result.set_exception(exc)
