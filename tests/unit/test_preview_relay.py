"""PreviewRelay (serve_app/preview_relay.py) with an in-memory log and a fake endpoint port:
it asks the endpoint the task runs on, relays the newest preview as an `event: preview` line,
asks nothing before dispatch or after the end, and leaves no call behind when closed."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest

from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from serve_app import preview_relay

pytestmark = pytest.mark.timeout(10)


class FakeEndpoint:
    """`EndpointApi.preview` answered from a queue the test fills; records every call."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.calls: list[tuple[str, str, int]] = []
        self.pending = 0

    def port(self, name: str) -> Any:
        endpoint = self

        class Port:
            async def preview(self, task_id: str, after: int, timeout_s: float) -> Any:
                endpoint.calls.append((name, task_id, after))
                endpoint.pending += 1
                try:
                    return await endpoint.answers.get()
                finally:
                    endpoint.pending -= 1

        return Port()


async def task(log: InMemoryEventLog, *, dispatched: bool) -> str:
    task_id = str(uuid.uuid4())
    await log.append(task_id, 0, [events.TaskSubmitted(workflow="w", workflow_version="1", params={}, prompt={})])
    if dispatched:
        await log.append(task_id, 1, [events.TaskDispatched(endpoint="ep:1", prompt_id="p", attempt=1)])
    return task_id


async def lines_until(relay: preview_relay.PreviewRelay, done: asyncio.Event) -> list[bytes]:
    return [line async for line in relay.during(done.wait())]


async def test_the_newest_preview_of_the_running_task_becomes_a_preview_line() -> None:
    log, ep = InMemoryEventLog(), FakeEndpoint()
    task_id = await task(log, dispatched=True)
    relay = preview_relay.PreviewRelay(log, task_id, ep.port)
    relay.start()
    done = asyncio.Event()
    reading = asyncio.create_task(lines_until(relay, done))
    await ep.answers.put({"version": 3, "content_type": "image/jpeg", "data": b"\xff\xd8jpeg"})
    while len(ep.calls) < 2:  # the next call asks after the version it got
        await asyncio.sleep(0.01)
    done.set()
    lines = await reading
    assert ep.calls == [("ep:1", task_id, 0), ("ep:1", task_id, 3)]
    assert len(lines) == 1 and lines[0].startswith(b"event: preview\ndata: ")
    assert b"\nid:" not in lines[0] and lines[0].endswith(b"\n\n")
    body = json.loads(lines[0].split(b"data: ", 1)[1])
    assert body["content_type"] == "image/jpeg" and base64.b64decode(body["data"]) == b"\xff\xd8jpeg"
    await relay.close()
    assert ep.pending == 0  # the call in flight went with the relay


async def test_nothing_is_asked_of_an_endpoint_before_the_task_is_dispatched() -> None:
    log, ep = InMemoryEventLog(), FakeEndpoint()
    task_id = await task(log, dispatched=False)
    relay = preview_relay.PreviewRelay(log, task_id, ep.port)
    relay.start()
    await asyncio.sleep(0.05)
    assert ep.calls == []
    await log.append(task_id, 1, [events.TaskDispatched(endpoint="ep:2", prompt_id="p", attempt=1)])
    relay.task_changed()
    while not ep.calls:
        await asyncio.sleep(0.01)
    assert ep.calls == [("ep:2", task_id, 0)]
    await relay.close()
    assert ep.pending == 0


async def test_the_relay_ends_by_itself_with_the_task() -> None:
    log, ep = InMemoryEventLog(), FakeEndpoint()
    task_id = await task(log, dispatched=True)
    relay = preview_relay.PreviewRelay(log, task_id, ep.port)
    relay.start()
    while not ep.calls:
        await asyncio.sleep(0.01)
    await log.append(task_id, 2, [events.TaskSucceeded(prompt_id="p")])
    relay.task_changed()
    await ep.answers.put(None)  # the endpoint's answer at the prompt's end
    assert relay._loop is not None
    await asyncio.wait_for(relay._loop, 5)
    assert len(ep.calls) == 1
    await relay.close()
