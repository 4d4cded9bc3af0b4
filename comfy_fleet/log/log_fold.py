"""The fold of the log as COPY text into read-model rows as COPY text (`LogFold`): what a
rebuild does in Python (comfy_fleet/log/rebuild.py). Pure: no I/O, tested in
tests/unit/test_rebuild.py."""

from __future__ import annotations

import re
from datetime import datetime

import orjson

from comfy_fleet import errors

from comfy_fleet.log import events, task_state
from comfy_fleet.log.event_log import state_from_json, state_json
from comfy_fleet.log.task_state import TaskState

#: The read model's columns (`tasks`, and the fold snapshot's `fold_snapshot_rows`), in the
#: order of `read_model_row`.
COLUMNS = ("task_id", "client_task_id", "workflow", "status", "priority", "webhook",
           "last_seq", "created_at", "updated_at", "state", "tenant")

#: The type of a line of the log's text that is not an event but a task's folded state as of
#: its seq (a fold snapshot's row): the fold goes on from it.
SNAPSHOT_LINE = b""

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPED = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _text(value: str | None) -> bytes:
    return b"\\N" if value is None else value.translate(_ESCAPES).encode()


def _unescape(field: bytes) -> bytes:
    return _ESCAPED.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(1)), field)


def read_model_row(s: TaskState) -> bytes:
    """The read-model row of a state (COLUMNS) as one line of COPY text. The JSON text has no raw
    control characters (JSON escapes them), so only its backslashes need doubling."""
    return b"%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n" % (
        s.task_id.encode(), _text(s.client_task_id), _text(s.workflow), _text(s.status),
        s.priority, _text(s.webhook), s.seq, s.created_at.isoformat().encode(),
        s.updated_at.isoformat().encode(), state_json(s).replace(b"\\", b"\\\\"),
        _text(s.tenant),
    )


class LogFold:
    """Folds the log as COPY text (lines of task_id, seq, type, schema_version, payload,
    recorded_at, in DateStyle ISO and UTC; each task's events together and in seq order) into
    read-model rows as COPY text. `feed` takes the text in chunks of any size and returns the rows
    of the tasks it completed; `finish` returns the last one.

    A line of type SNAPSHOT_LINE (''), first of its task, carries the task's state as of its seq
    (the state JSON of a read-model row, as payload): the task's events after it follow. `tasks`,
    `events` and `task_ids` count what was folded (a snapshot line is no event)."""

    def __init__(self) -> None:
        self.tasks = 0
        self.events = 0
        self.task_ids: list[str] = []
        self._tail = b""
        self._current = b""  # task_id of the state being folded, as in the log's text
        self._task_id = ""
        self._state: TaskState | None = None

    def feed(self, data: bytes) -> bytes:
        lines = (self._tail + data if self._tail else data).split(b"\n")
        self._tail = lines.pop()
        rows: list[bytes] = []
        ids: list[str] = []
        state, current, task_id = self._state, self._current, self._task_id
        apply, decode, loads = task_state.apply, events.decode, orjson.loads
        parse_at = datetime.fromisoformat
        folded = 0
        try:
            for line in lines:
                tid, seq, type_, version, payload, at = line.split(b"\t")
                if tid != current:
                    if state is not None:
                        rows.append(read_model_row(state))
                        ids.append(task_id)
                    state, current, task_id = None, tid, tid.decode()
                if b"\\" in payload:
                    payload = _unescape(payload)
                if type_ == SNAPSHOT_LINE:
                    state = _resumed(state, task_id, int(seq), loads(payload))
                    continue
                event = decode(type_.decode(), int(version), loads(payload))
                state = apply(state, task_id, int(seq), parse_at(at.decode()), event, in_place=True)
                folded += 1
        finally:
            self.tasks += len(rows)
            self.events += folded
            self.task_ids += ids
            self._state, self._current, self._task_id = state, current, task_id
        return b"".join(rows)

    def finish(self) -> bytes:
        if self._tail:
            raise errors.FleetError("rebuild: the log's COPY text ends inside a line")
        if self._state is None:
            return b""
        self.tasks += 1
        self.task_ids.append(self._task_id)
        row, self._state = read_model_row(self._state), None
        return row


def _resumed(
    state: TaskState | None, task_id: str, seq: int, data: dict[str, object]
) -> TaskState:
    """The state a snapshot line carries, checked: first of its task, of that task and seq."""
    if state is not None:
        raise errors.FleetError(f"rebuild: task {task_id}: a snapshot's state after its events")
    resumed = state_from_json(data)
    if resumed.task_id != task_id or resumed.seq != seq:
        raise errors.FleetError(
            f"rebuild: task {task_id}: a snapshot's state of task {resumed.task_id} at seq"
            f" {resumed.seq}, not at {seq}"
        )
    return resumed
