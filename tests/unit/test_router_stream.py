"""The router hands tasks to an endpoint on the stream the endpoint holds open
(`Router.dispatch_feed`), without Ray: "accepted" is not answered, other answers come by
`dispatch_results`, a batch that never reached its endpoint is handed out again by the scan,
and an endpoint without a stream is called (`dispatch_many`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors import router as router_module
from actors.router import Router
from comfy_fleet.log.event_log import InMemoryEventLog
from tests.support.polling import eventually
from tests.unit.test_router import (  # noqa: F401  (fixtures)
    FakeEndpoint, end_in_log, fast_heartbeat, make_router, started, submit,
)


class StreamReader:
    """An endpoint's end of its stream: what came on it, batch by batch."""

    def __init__(self, r: Router, name: str) -> None:
        self.batches: list[list[tuple[str, Any]]] = []
        self.stream = r.dispatch_feed(name)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for batch in self.stream:
            self.batches.append(batch)

    @property
    def task_ids(self) -> list[str]:
        return [t for b in self.batches for t, _ in b]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.stream.aclose()


async def streaming(
    started: list[Router], depth: int
) -> tuple[InMemoryEventLog, FakeEndpoint, Router, StreamReader]:
    """A started router whose one endpoint ("a:1") holds its stream open."""
    log = InMemoryEventLog()
    ep = FakeEndpoint("a:1")
    r = make_router(log, [ep], started, depth=depth)
    await r.start()
    reader = StreamReader(r, "a:1")
    await eventually(lambda: r.streams.uses("a:1"), what="the stream open")
    return log, ep, r, reader


async def test_tasks_go_on_the_open_stream_with_their_states_and_not_by_call(
    started: list[Router],
) -> None:
    log, ep, r, reader = await streaming(started, depth=3)
    tasks = [await submit(log) for _ in range(3)]

    await eventually(lambda: len(reader.task_ids) == 3, what="three tasks on the stream")
    assert sorted(reader.task_ids) == sorted(tasks) and ep.dispatched == []
    carried = {t: s for b in reader.batches for t, s in b}
    assert all(carried[t] and carried[t]["task_id"] == t for t in tasks)  # the notices' states
    assert r.assigned["a:1"] == set(tasks)
    assert (await r.stats())["endpoints"]["a:1"]["dispatch_stream"] is True

    # Ended in the log: the slot is free, nothing is left to settle.
    await end_in_log(log, tasks[0], "a:1")
    await eventually(lambda: tasks[0] not in r.assigned["a:1"], what="the slot freed")
    assert tasks[0] not in r.streams.sent

    # The stream closed: the next task is called for.
    await reader.close()
    assert not r.streams.uses("a:1")
    late = await submit(log)
    await eventually(lambda: ep.dispatched == [late], what="a call for the next task")


async def test_answers_other_than_accepted_come_back_and_are_acted_on(
    started: list[Router],
) -> None:
    log, _, r, reader = await streaming(started, depth=2)
    retry, refused = await submit(log), await submit(log)
    await eventually(lambda: len(reader.task_ids) == 2, what="two tasks on the stream")

    await r.dispatch_results("a:1", [retry, refused], ["retry", "refused"])
    assert refused not in r.assigned["a:1"] and refused not in r.waiting
    # Retry: it waits again, and the endpoint counts as disconnected until its next status.
    assert retry not in r.assigned["a:1"]
    await eventually(lambda: reader.task_ids.count(retry) == 2, what="the retry handed out again")
    assert r.streams.sent.keys() == {retry}
    await reader.close()


async def test_a_batch_that_never_reached_its_endpoint_is_handed_out_again(
    started: list[Router], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router_module, "SCAN_S", 0.02)
    log, ep, r, reader = await streaming(started, depth=2)  # it dies with what it reads
    r.streams.grace_s = 0.2
    lost = await submit(log)
    await eventually(lambda: reader.task_ids == [lost], what="the task on the stream")

    # Still queued in the log past the grace: its stream is ended and the task called for.
    await eventually(lambda: ep.dispatched == [lost], timeout=5, what="the task handed out again")
    await eventually(lambda: reader.task.done(), what="the stream ended")
    assert not r.streams.uses("a:1") and r.assigned["a:1"] == {lost}
    assert r.streams.sent == {}
