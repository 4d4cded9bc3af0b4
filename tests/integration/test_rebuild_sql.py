"""The full rebuild against the real PostgreSQL: the read model it writes (the common lifecycles
folded in SQL by `rebuild_plain_tasks`, in parallel sessions, the rest by the Python fold)
equals `replay` of every task, for a log with every event type and every late-event rule, and
equals, row for row, the rebuild that folds every task in Python. The rebuild from the fold
snapshot: tests/integration/test_rebuild_snapshot.py."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from comfy_fleet.log import rebuild
from comfy_fleet.log import events, task_state
from comfy_fleet.log.event_log import state_from_json, state_to_json
from comfy_fleet.log.events import StoredEvent
from comfy_fleet.log.sql import queries
from tests.unit.test_rebuild import ODD, output, stored_log, submitted

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _plain_shapes() -> dict[str, list[events.Event]]:
    """Lifecycles the SQL folds (by name), and near misses it must leave to the Python fold."""
    d = events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1)
    ok = events.TaskSucceeded(prompt_id="p")
    tried = events.WebhookAttempted(webhook_id="w", attempt=1, status_code=500, retry_in_s=1.0)
    delivered = events.WebhookDelivered(webhook_id="w", attempt=2, status_code=204)
    dead = events.WebhookDead(webhook_id="w", attempts=8)
    progressed = [events.TaskProgressed(prompt_id="p", value=i, max=4, node="3") for i in range(3)]
    failed = events.TaskFailed(code="comfy", message=ODD, node_id="7", node_type="KSampler",
                               details={"why": ODD, "n": 1.5})
    fallback = events.TaskOutputStored(
        prompt_id="p", index=0, node_id="9", filename="a.png", subfolder="", kind="images",
        content_type="image/png", size=10, sha256="ab", s3_key="k", fallback_path="/kept/a.png",
    )
    return {
        "plain queued": [submitted()],
        "plain queued, no callback, odd client id": [submitted(callback_url=None, client_task_id=ODD)],
        "plain dispatched": [submitted(priority=-3), d],
        "plain running": [submitted(), d, events.TaskPromptQueued(prompt_id="p", number=1.0),
                          events.TaskStarted(prompt_id="p")],
        "plain progressing": [submitted(), d, events.TaskStarted(prompt_id="p"), *progressed],
        "plain progress without node": [submitted(), d, events.TaskProgressed(prompt_id="p", value=1, max=2)],
        "plain succeeded, delivered": [submitted(), d, events.TaskStarted(prompt_id="p"), *progressed,
                                       output("p", 0), ok, tried, delivered],
        "plain succeeded, no callback": [submitted(callback_url=None), d, output("p", 0), ok],
        "plain succeeded, output after the end": [submitted(), d, ok, output("p", 0)],
        "plain succeeded, delivered then dead": [submitted(), d, ok, delivered, dead],
        "plain succeeded, dead then tried": [submitted(), d, ok, dead, tried],
        "plain kept output": [submitted(), d, fallback, ok, tried],
        "plain failed": [submitted(), d, failed, dead],
        "plain failed, bare": [submitted(), d, events.TaskFailed(code="c", message="m", node_id="")],
        "plain failed at once": [submitted(), d, events.TaskFailed(code="c", message="m", details=[])],
        "plain queued, of a batch": [submitted(batch_id=str(uuid.uuid4()), tenant="acme")],
        "plain succeeded, of a batch": [submitted(batch_id=str(uuid.uuid4())), d, output("p", 0), ok],
        "plain queued, a rerun": [submitted(rerun_of=str(uuid.uuid4()), seeds_drawn=["seed"])],
        "plain failed, a rerun with a model": [
            submitted(rerun_of=str(uuid.uuid4()), models=[
                {"param": "ckpt", "sha256": "ab", "s3_key": "m/ab", "filename": "a.safetensors",
                 "folder": "checkpoints"}]), d, failed],
        "plain dispatched, naming a model file": [submitted(
            model_files=[{"param": "lora", "folder": "loras", "filename": ODD}],
            required_labels=[f"file:loras/{ODD}"]), d],
        # Near misses: the Python fold's.
        "started after the end": [submitted(), d, ok, events.TaskStarted(prompt_id="p")],
        "second end": [submitted(), d, ok, failed],
        "two outputs": [submitted(), d, output("p", 0), output("p", 1), ok],
        "other prompt": [submitted(), d, events.TaskStarted(prompt_id="q")],
        "webhook before the end": [submitted(), d, tried, ok],
        "not dispatched first": [submitted(), events.TaskStarted(prompt_id="p")],
        "cancel asked": [submitted(), d, events.TaskCancelRequested(), ok],
    }


def every_lifecycle() -> list[list[StoredEvent]]:
    """Every shape above and every stream of the unit tests (all event types, late events),
    with times with and without microseconds."""
    streams: list[list[StoredEvent]] = []
    for k, evs in enumerate(_plain_shapes().values()):
        tid = str(uuid.uuid4())
        at = [T0 + timedelta(seconds=k + i, microseconds=(k % 2) * (i + 1) * 10) for i in range(len(evs))]
        streams.append([StoredEvent(tid, i, ev, at[i - 1]) for i, ev in enumerate(evs, 1)])
    streams += stored_log(25)
    # client_task_id is unique in the read model: number the repeated ones.
    for k, stream in enumerate(streams):
        first = stream[0]
        assert isinstance(first.event, events.TaskSubmitted)
        if first.event.client_task_id is not None:
            ev = dataclasses.replace(first.event, client_task_id=f"{first.event.client_task_id}{k}")
            stream[0] = dataclasses.replace(first, event=ev)
    return streams


async def write_log(dsn: str, log: list[list[StoredEvent]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "task_events",
            records=[(uuid.UUID(s.task_id), s.seq, s.type, s.event.SCHEMA_VERSION,
                      orjson.dumps(s.event.payload()).decode(), s.at)
                     for stream in log for s in stream],
            columns=["task_id", "seq", "type", "schema_version", "payload", "recorded_at"],
        )
    finally:
        await conn.close()


async def read_model_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT * FROM tasks ORDER BY task_id"))
    finally:
        await conn.close()


async def _sql_folded(dsn: str) -> set[str]:
    """The task ids `rebuild_plain_tasks` alone stages, over the whole task-id space (rolled
    back)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(queries["rebuild_plain_tasks"], *rebuild.task_id_ranges(1)[0])
            ids = {str(r[0]) for r in await conn.fetch("SELECT task_id FROM fold_snapshot_rows")}
            raise _Rollback
    except _Rollback:
        return ids
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


@pytest.fixture
async def written(pg_dsn: str) -> AsyncIterator[list[list[StoredEvent]]]:
    log = every_lifecycle()
    await write_log(pg_dsn, log)
    yield log


async def test_sql_rebuild_equals_the_fold_of_every_task(
    pg_dsn: str, written: list[list[StoredEvent]]
) -> None:
    done = await rebuild.rebuild(pg_dsn, method="sql")
    assert (done.tasks, done.full) == (len(written), rebuild.NO_SNAPSHOT)
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), written)


def assert_rows_are_the_fold(rows: list[asyncpg.Record], log: list[list[StoredEvent]]) -> None:
    """The read model holds one row per task of `log`, each equal to `replay` of its events."""
    by_id = {str(r["task_id"]): r for r in rows}
    assert len(by_id) == len(rows) == len(log)
    for stream in log:
        want = task_state.replay(stream)
        assert want is not None
        row = by_id[stream[0].task_id]
        assert (row["client_task_id"], row["workflow"], row["status"], row["priority"],
                row["webhook"], row["last_seq"], row["created_at"], row["updated_at"],
                row["tenant"]) == (
            want.client_task_id, want.workflow, want.status, want.priority, want.webhook,
            want.seq, want.created_at, want.updated_at, want.tenant)
        state = orjson.loads(row["state"])
        assert state_from_json(state) == want
        assert state == orjson.loads(orjson.dumps(state_to_json(want)))


async def test_sql_folds_the_common_lifecycles_and_leaves_the_rest(
    pg_dsn: str, written: list[list[StoredEvent]]
) -> None:
    names = list(_plain_shapes())
    ids = {stream[0].task_id: names[k] for k, stream in enumerate(written[: len(names)])}
    folded = await _sql_folded(pg_dsn)
    assert {ids[t] for t in folded if t in ids} == {n for n in names if n.startswith("plain")}
    # The unit streams: the plain ones (queued, dispatched) in SQL, the others not.
    assert 0 < len(folded - set(ids)) < len(written) - len(names)


@pytest.mark.parametrize("workers", [1, 3])
async def test_sql_and_python_rebuilds_write_the_same_rows(
    pg_dsn: str, written: list[list[StoredEvent]], workers: int
) -> None:
    assert await rebuild.rebuild_read_model(pg_dsn, workers=2, method="fold") == len(written)
    by_fold = await read_model_rows(pg_dsn)
    assert await rebuild.rebuild_read_model(pg_dsn, workers, "sql", full=True) == len(written)
    assert await read_model_rows(pg_dsn) == by_fold
    conn = await asyncpg.connect(pg_dsn)
    try:  # the fold snapshot holds what the read model does
        snapshot = await conn.fetch("SELECT * FROM fold_snapshot_rows ORDER BY task_id")
        assert [tuple(r) for r in snapshot] == [tuple(r) for r in by_fold]
    finally:
        await conn.close()


async def test_a_second_sql_rebuild_at_once_is_refused(
    pg_dsn: str, written: list[list[StoredEvent]]
) -> None:
    from comfy_fleet import errors
    from comfy_fleet.log import rebuild_sql

    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", rebuild_sql.REBUILD_LOCK)
        with pytest.raises(errors.FleetError, match="another rebuild"):
            await rebuild.rebuild_read_model(pg_dsn, method="sql")
    finally:
        await conn.close()
    assert await rebuild.rebuild_read_model(pg_dsn, method="sql") == len(written)


@pytest.mark.parametrize("full", [True, False], ids=["full", "from the snapshot"])
@pytest.mark.parametrize("broken", ["gap", "no submitted"])
async def test_sql_rebuild_fails_on_a_broken_stream_and_keeps_the_read_model(
    pg_dsn: str, written: list[list[StoredEvent]], broken: str, full: bool
) -> None:
    from comfy_fleet import errors

    assert await rebuild.rebuild_read_model(pg_dsn, method="sql") == len(written)
    before = await read_model_rows(pg_dsn)
    stream = written[6]  # a whole plain lifecycle: without its dispatch (a gap at seq 2), or
    tid = str(uuid.uuid4())  # a lone start at seq 1, which the SQL's checks alone would take
    if broken == "gap":
        bad, match = [StoredEvent(tid, s.seq, s.event, s.at) for s in stream if s.seq != 2], "follows"
    else:
        bad, match = [StoredEvent(tid, 1, events.TaskStarted(prompt_id="p"), T0)], "starts with"
    await write_log(pg_dsn, [bad])
    with pytest.raises(errors.FleetError, match=match):
        await rebuild.rebuild_read_model(pg_dsn, method="sql", full=full)
    assert await read_model_rows(pg_dsn) == before


async def test_outputs_of_every_recorded_form_are_the_fold(pg_dsn: str) -> None:
    # task.output_stored as recorded over time: without fallback_path, with it empty or null,
    # and with a key the fold does not know (left to the Python fold, which drops it).
    base = output("p", 0).payload()
    del base["fallback_path"]
    forms = {"no fallback_path": base, "empty": base | {"fallback_path": ""},
             "null": base | {"fallback_path": None}, "kept": base | {"fallback_path": "/k/a"},
             "unknown key": base | {"later": 1}}
    streams: dict[str, list[StoredEvent]] = {}
    for name, payload in forms.items():
        tid = str(uuid.uuid4())
        stored = [submitted(), events.TaskDispatched(endpoint="e:1", prompt_id="p", attempt=1),
                  events.decode("task.output_stored", 1, payload),
                  events.TaskSucceeded(prompt_id="p")]
        streams[name] = [StoredEvent(tid, i, ev, T0 + timedelta(seconds=i))
                         for i, ev in enumerate(stored, 1)]
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.copy_records_to_table(
            "task_events",
            records=[
                (uuid.UUID(s.task_id), s.seq, s.type, 1, orjson.dumps(
                    forms[name] if s.type == "task.output_stored" else s.event.payload()
                ).decode(), s.at)
                for name, stream in streams.items() for s in stream],
            columns=["task_id", "seq", "type", "schema_version", "payload", "recorded_at"],
        )
    finally:
        await conn.close()
    folded = await _sql_folded(pg_dsn)
    assert {n for n, s in streams.items() if s[0].task_id in folded} == set(forms) - {"unknown key"}
    await rebuild.rebuild(pg_dsn, full=True)
    assert_rows_are_the_fold(await read_model_rows(pg_dsn), list(streams.values()))


def test_the_sql_fold_is_written_for_the_schema_versions_of_today() -> None:
    # rebuild_plain_tasks reads version 1 of every event type; a new version must be taught to
    # it (or it leaves such tasks to the Python fold, which is correct but slower).
    assert {cls.SCHEMA_VERSION for cls in events.REGISTRY.values()} == {1}
    assert "schema_version = 1" in queries["rebuild_plain_tasks"]
