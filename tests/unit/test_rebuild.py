"""The rebuild's pure parts: the task-id ranges, the fold of the log's COPY text into read-model
rows (from the first event, or from a fold snapshot's state), the fold version, and the
shortcuts it takes (state_json, decode without __init__). No I/O."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from comfy_fleet import errors

from comfy_fleet.log import events, fold_snapshot, task_state
from comfy_fleet.log.event_log import state_from_json, state_json, state_to_json
from comfy_fleet.log.events import StoredEvent
from comfy_fleet.log.log_fold import COLUMNS, LogFold, read_model_row
from comfy_fleet.log.rebuild import task_id_ranges
from comfy_fleet.log.sql import queries

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ODD = "tab\there, newline\nthere, back\\slash, \"quote\", \r, é, \u2603"


def submitted(**kw: object) -> events.TaskSubmitted:
    fields: dict[str, object] = {
        "workflow": "solid", "workflow_version": "v1", "params": {"w": 8, "text": ODD},
        "prompt": {"1": {"class_type": "X", "inputs": {"text": ODD}}}, "request_hash": "h",
        "callback_url": "http://x/h",
    }
    return events.TaskSubmitted(**(fields | kw))  # type: ignore[arg-type]


def output(prompt_id: str, i: int) -> events.TaskOutputStored:
    return events.TaskOutputStored(
        prompt_id=prompt_id, index=i, node_id="9", filename=f"a{i}.png", subfolder="",
        kind="images", content_type="image/png", size=10, sha256="ab", s3_key=f"k{i}",
    )


def streams() -> list[list[events.Event]]:
    """Lifecycles that take most branches of the fold."""
    dispatched = events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)
    return [
        [submitted()],
        [submitted(client_task_id=ODD, callback_url=None), dispatched],
        [submitted(), dispatched, events.TaskPromptQueued(prompt_id="p", number=1.0),
         events.TaskStarted(prompt_id="p"),
         events.TaskProgressed(prompt_id="p", value=1, max=4, node="3"),
         output("p", 0), events.TaskSucceeded(prompt_id="p"),
         events.WebhookAttempted(webhook_id="w", attempt=1, status_code=500, retry_in_s=1.0),
         events.WebhookDelivered(webhook_id="w", attempt=2, status_code=204)],
        [submitted(), dispatched,
         events.TaskRequeued(endpoint="e:1", prompt_id="p", reason="lost"),
         events.TaskDispatched(endpoint="e:2", prompt_id="p2", attempt=2), output("p2", 0),
         events.TaskFailed(code=task_state.STORAGE_FAILED, message=ODD, details={"why": ODD}),
         events.WebhookDead(webhook_id="w", attempts=8),
         events.TaskOutputsRecovered(
             prompt_id="p2", outputs=[output("p2", 0).payload()], recovered=["k0"]
         ),
         events.WebhookRedeliveryRequested()],
        [submitted(priority=-3), events.TaskCancelRequested(), events.TaskCancelled(where="queue"),
         events.TaskSucceeded(prompt_id="p")],
    ]


def stored_log(n_tasks: int, seed: int = 7) -> list[list[StoredEvent]]:
    """`n_tasks` streams (sorted by task id, as the rebuild reads them), some sharing a time."""
    rnd = random.Random(seed)
    kinds = streams()
    out = []
    for k in range(n_tasks):
        tid = str(uuid.UUID(int=rnd.getrandbits(128)))
        evs = kinds[k % len(kinds)]
        at = [T0 + timedelta(seconds=k, milliseconds=(i // 2) * (k % 3)) for i in range(len(evs) + 1)]
        out.append([StoredEvent(tid, i, ev, at[i]) for i, ev in enumerate(evs, 1)])
    return sorted(out, key=lambda s: s[0].task_id)


def _escaped(text: str) -> str:
    """What PostgreSQL's COPY TO (text format) writes for a field."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def log_copy_text(
    log: list[list[StoredEvent]], snapshots: dict[str, task_state.TaskState] | None = None
) -> bytes:
    """The log as `COPY (select_log_range) TO STDOUT` writes it (DateStyle ISO, UTC); with
    `snapshots`, as `select_log_unfolded` does: a task's state (as its read-model row holds it)
    before its events."""
    lines = []
    for stream in log:
        held = (snapshots or {}).get(stream[0].task_id)
        if held is not None:
            state = orjson.dumps(state_to_json(held)).decode()
            at = held.updated_at.isoformat(sep=" ").replace("+00:00", "+00")
            lines.append("\t".join([stream[0].task_id, str(held.seq), "", "0", _escaped(state), at]))
        for s in stream:
            at = s.at.isoformat(sep=" ").replace("+00:00", "+00")
            payload = orjson.dumps(s.event.payload()).decode()
            lines.append("\t".join(
                [s.task_id, str(s.seq), s.type, str(s.event.SCHEMA_VERSION), _escaped(payload), at]
            ))
    return ("\n".join(lines) + "\n").encode()


def _unescaped(field: str) -> str | None:
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\":
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_rows(text: bytes) -> list[dict[str, str | None]]:
    assert text.endswith(b"\n") or not text
    return [
        dict(zip(COLUMNS, map(_unescaped, line.split("\t")), strict=True))
        for line in text.decode().split("\n")[:-1]
    ]


def expected_row(s: task_state.TaskState) -> dict[str, str | None]:
    return {
        "task_id": s.task_id, "client_task_id": s.client_task_id, "workflow": s.workflow,
        "status": s.status, "priority": str(s.priority), "webhook": s.webhook,
        "last_seq": str(s.seq), "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat(), "tenant": s.tenant,
    }


# --- ranges -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_ranges_cover_the_uuid_space_without_overlap(n: int) -> None:
    ranges = [(uuid.UUID(a).int, uuid.UUID(b).int) for a, b in task_id_ranges(n)]
    assert len(ranges) == n
    assert ranges[0][0] == 0 and ranges[-1][1] == (1 << 128) - 1
    for (_, last), (first, _) in zip(ranges, ranges[1:]):
        assert first == last + 1
    widths = [b - a + 1 for a, b in ranges]
    assert all(lo <= hi for lo, hi in ranges) and max(widths) - min(widths) <= 1
    rnd = random.Random(n)
    for _ in range(200):
        x = rnd.getrandbits(128)
        assert sum(a <= x <= b for a, b in ranges) == 1


def test_ranges_need_at_least_one() -> None:
    assert task_id_ranges(1) == [
        ("00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")
    ]
    with pytest.raises(ValueError):
        task_id_ranges(0)


# --- the fold of the COPY text ----------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_fold_of_the_copy_text_equals_the_fold_of_every_task(chunk: int) -> None:
    log = stored_log(23)
    text = log_copy_text(log)
    fold = LogFold()
    out = b"".join(fold.feed(text[i:i + chunk]) for i in range(0, len(text), chunk)) + fold.finish()
    rows = parse_rows(out)
    assert fold.tasks == len(rows) == len(log)
    for stream, row in zip(log, rows, strict=True):
        want = task_state.replay(stream)
        assert want is not None
        state = row.pop("state")
        assert state is not None
        assert row == expected_row(want)
        assert state_from_json(orjson.loads(state)) == want
        assert orjson.loads(state) == orjson.loads(orjson.dumps(state_to_json(want)))


@pytest.mark.parametrize("chunk", [5, 4096])
def test_fold_from_a_snapshot_state_equals_the_fold_of_every_task(chunk: int) -> None:
    # Every task of every kind, cut after each of its events: the state up to the cut (as a
    # fold snapshot holds it) and the events after it; beside tasks with no snapshot.
    log: list[list[StoredEvent]] = []
    held: dict[str, task_state.TaskState] = {}
    tails: list[list[StoredEvent]] = []
    for k, stream in enumerate(stored_log(40)):
        cut = k % len(stream)  # 0: no snapshot of the task
        if cut:
            state = task_state.replay(stream[:cut])
            assert state is not None
            held[stream[0].task_id] = state
        log.append(stream)
        tails.append(stream[cut:])
    tails = [t for t in tails if t]
    text = log_copy_text(tails, held)
    fold = LogFold()
    out = b"".join(fold.feed(text[i:i + chunk]) for i in range(0, len(text), chunk)) + fold.finish()
    rows = parse_rows(out)
    by_id = {stream[0].task_id: stream for stream in log}
    assert fold.tasks == len(rows) == len(tails) and fold.events == sum(map(len, tails))
    assert fold.task_ids == [row["task_id"] for row in rows]
    assert any(t[0].seq > 1 for t in tails) and any(t[0].seq == 1 for t in tails)
    for row in rows:
        want = task_state.replay(by_id[str(row["task_id"])])
        assert want is not None
        state = row.pop("state")
        assert state is not None
        assert row == expected_row(want)
        assert state_from_json(orjson.loads(state)) == want


def test_a_snapshot_state_must_be_the_tasks_own_and_come_first() -> None:
    stream = max(stored_log(5), key=len)
    state = task_state.replay(stream[:2])
    assert state is not None
    other = task_state.replay(stored_log(5)[0][:2])
    assert other is not None
    with pytest.raises(errors.FleetError, match="not at 3"):  # its seq is not the line's
        LogFold().feed(log_copy_text([stream[2:]], {state.task_id: state}).replace(
            b"\t2\t\t0\t", b"\t3\t\t0\t", 1))
    other.task_id = "x"
    with pytest.raises(errors.FleetError, match="of task x"):
        LogFold().feed(log_copy_text([stream[2:]], {state.task_id: other}))
    text = log_copy_text([stream[:2]]) + log_copy_text([stream[2:]], {state.task_id: state})
    with pytest.raises(errors.FleetError, match="after its events"):
        LogFold().feed(text)


def test_the_fold_version_is_the_digest_of_the_fold_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    version = fold_snapshot.fold_version()
    assert len(version) == 32 and version == fold_snapshot.fold_version()
    # Whatever turns events into rows is in it: the fold, the events' decoding, the row's JSON
    # and COPY text, the SQL fold and the query that feeds the Python fold.
    names = {m.__name__ for m in fold_snapshot.FOLD_MODULES}
    assert {"comfy_fleet.log.task_state", "comfy_fleet.log.events", "comfy_fleet.log.cancel",
            "comfy_fleet.delivery.ids", "comfy_fleet.log.event_log",
            "comfy_fleet.log.log_fold"} <= names
    assert set(fold_snapshot.FOLD_QUERIES) == {"rebuild_plain_tasks", "select_log_unfolded"}
    changed = tmp_path / "task_state.py"
    changed.write_bytes(Path(task_state.__file__ or "").read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(task_state, "__file__", str(changed))
    fold_snapshot.fold_version.cache_clear()
    try:
        assert fold_snapshot.fold_version() != version
        monkeypatch.undo()
        fold_snapshot.fold_version.cache_clear()
        assert fold_snapshot.fold_version() == version
        monkeypatch.setitem(queries, "rebuild_plain_tasks", queries["rebuild_plain_tasks"] + " ")
        fold_snapshot.fold_version.cache_clear()
        assert fold_snapshot.fold_version() != version
    finally:
        monkeypatch.undo()
        fold_snapshot.fold_version.cache_clear()
    assert fold_snapshot.fold_version() == version


def test_fold_of_nothing_is_no_rows() -> None:
    fold = LogFold()
    assert fold.feed(b"") == b"" and fold.finish() == b"" and fold.tasks == 0


def test_fold_refuses_a_broken_stream_or_a_cut_line() -> None:
    log = stored_log(5)
    long = max(log, key=len)
    text = log_copy_text([long[1:]])  # starts without task.submitted
    with pytest.raises(errors.FleetError, match="stream starts with"):
        LogFold().feed(text)
    text = log_copy_text([long[:1] + long[2:]])  # a gap
    with pytest.raises(errors.FleetError, match="follows"):
        LogFold().feed(text)
    fold = LogFold()
    fold.feed(log_copy_text(log)[:-1])
    with pytest.raises(errors.FleetError, match="inside a line"):
        fold.finish()


def test_read_model_row_escapes_text_and_json() -> None:
    state = task_state.replay(stored_log(5)[1])
    assert state is not None
    state.client_task_id, state.workflow = ODD, "w\\f"
    (row,) = parse_rows(read_model_row(state))
    assert row["client_task_id"] == ODD and row["workflow"] == "w\\f"
    assert state_from_json(orjson.loads(row["state"] or "")) == state


# --- shortcuts ----------------------------------------------------------------------------------

def test_state_json_is_the_json_of_state_to_json() -> None:
    for stream in stored_log(10):
        for i in range(1, len(stream) + 1):
            s = task_state.replay(stream[:i])
            assert s is not None
            assert state_json(s) == orjson.dumps(state_to_json(s))
    s = task_state.replay(stored_log(1)[0])
    assert s is not None
    for at in (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)):
        s.created_at = s.updated_at = s.finished_at = at
        assert state_json(s) == orjson.dumps(state_to_json(s))


def test_decode_equals_init_and_keeps_nothing_of_the_payload() -> None:
    for stream in streams():
        for ev in stream:
            payload = orjson.loads(orjson.dumps(ev.payload()))
            got = events.decode(ev.TYPE, ev.SCHEMA_VERSION, payload)
            assert type(got) is type(ev) and got == ev and repr(got) == repr(ev)
            payload.clear()
            assert got == ev
    # Older payloads (a defaulted field missing, a field since dropped) still go through __init__.
    queued = events.decode("task.prompt_queued", 1, {"prompt_id": "p"})
    assert queued == events.TaskPromptQueued(prompt_id="p")
    started = events.decode("task.started", 1, {"prompt_id": "p", "gone": 1})
    assert started == events.TaskStarted(prompt_id="p")
    with pytest.raises(TypeError):
        events.decode("task.started", 1, {})
