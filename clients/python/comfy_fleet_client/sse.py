"""Server-Sent Events: a line decoder (the WHATWG rules the service's stream follows), the
conversion of one message to a typed stream event, and the resume bookkeeping shared by the
sync and async clients. Pure: no I/O."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from comfy_fleet_client import errors, models

#: Longest silence accepted on a stream before reconnecting (the service sends a keep-alive
#: comment every 15 s while a task is quiet).
STREAM_READ_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


@dataclass
class Decoder:
    """Feed lines (without their line ending); get a Message at each blank line."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry: int | None = None
    _has_fields: bool = False

    def feed(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. the service's keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            return None  # unknown field: ignored, as the spec says
        self._has_fields = True
        return None

    def _dispatch(self) -> Message | None:
        if not self._has_fields:
            return None
        msg = Message(
            event=self._event or "message", data="\n".join(self._data), id=self._id, retry_ms=self._retry
        )
        self._event, self._data, self._id, self._retry, self._has_fields = "", [], None, None, False
        return msg


def decode(lines: Iterable[str]) -> Iterator[Message]:
    """All messages of a finished sequence of lines."""
    decoder = Decoder()
    for line in lines:
        msg = decoder.feed(line.rstrip("\r\n"))
        if msg is not None:
            yield msg
    last = decoder.feed("")
    if last is not None:
        yield last


def to_event(msg: Message) -> models.StreamEvent:
    """The typed event of one message: a recorded `Event` (it has an id), a `QueueUpdate`, a
    `Preview`, or a `StreamMessage` for kinds this client does not know."""
    try:
        data: Any = json.loads(msg.data) if msg.data else None
    except ValueError:
        data = msg.data
    if msg.event == "queue" and isinstance(data, dict):
        return models.QueueUpdate.model_validate({k: v for k, v in data.items() if k != "type"})
    if msg.event == "preview" and isinstance(data, dict):
        return models.Preview.model_validate({k: v for k, v in data.items() if k != "type"})
    if msg.id is not None and isinstance(data, dict) and "seq" in data:
        return models.Event.model_validate(data)
    return models.StreamMessage(type=msg.event, id=msg.id, data=data)


@dataclass
class Resume:
    """Where a stream stands, so a dropped connection resumes after the last event seen.

    `headers()` gives the `Last-Event-ID` for the next connection; `failed()` counts a
    connection that broke without delivering anything new and says how long to wait before
    the next one (raising once `max_failures` such breaks happened in a row).
    """

    last_event_id: str | None = None
    ended: bool = False
    max_failures: int = 5
    failures: int = 0

    def headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            h["Last-Event-ID"] = self.last_event_id
        return h

    def seen(self, msg: Message, event: models.StreamEvent) -> None:
        if msg.id is not None:
            self.last_event_id = msg.id
            self.failures = 0  # progress was made: the next break starts a fresh count
        if isinstance(event, models.Event) and event.is_final:
            self.ended = True

    def failed(self, exc: BaseException) -> float:
        """Seconds to wait before reconnecting; re-raises `exc` when retries are spent."""
        self.failures += 1
        if self.failures > self.max_failures:
            raise exc
        return min(0.2 * 2 ** (self.failures - 1), 3.0)


def read_timeout(deadline: float | None, now: float) -> float:
    """The read timeout of one stream connection: the silence limit, or less near a deadline."""
    if deadline is None:
        return STREAM_READ_TIMEOUT_S
    return max(0.05, min(STREAM_READ_TIMEOUT_S, deadline - now))


def check_deadline(deadline: float | None, task_id: str, ahead_s: float = 0.0, now: float | None = None) -> None:
    """Raise `WaitTimeout` when `deadline` (a monotonic time) is past, or will be after
    `ahead_s` more seconds."""
    if deadline is None:
        return
    current = time.monotonic() if now is None else now
    if current + ahead_s >= deadline:
        raise errors.WaitTimeout(f"task {task_id} did not end in time", details={"task_id": task_id})
