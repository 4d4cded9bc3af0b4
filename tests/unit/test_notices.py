"""The log's notices and the states they carry (comfy_fleet/log/notices.py): pure, no I/O."""

from __future__ import annotations

import orjson

from comfy_fleet.log import events, notices, task_state
from comfy_fleet.log.event_log import InMemoryEventLog, state_from_json, state_to_json


def submitted(**more: object) -> events.TaskSubmitted:
    return events.TaskSubmitted(
        workflow="solid", workflow_version="v1", params={"width": 8, **more}, prompt={},
        callback_url="http://hooks.example/x",
    )


def test_a_payload_carries_the_state_after_the_notice_fields() -> None:
    state = {"task_id": "t", "status": "queued"}
    notice = ("t", None, "hooks.example:80")
    raw = notices.payload(notice, state)
    assert raw is not None
    task_id, endpoint, webhook_to, *rest = orjson.loads(raw)
    assert (task_id, endpoint, webhook_to) == notice
    assert notices.carried_state(rest, 0) == state
    assert notices.payload(None, state) is None


def test_a_state_too_large_for_postgresql_is_left_out() -> None:
    big = {"task_id": "t", "params": {"prompt": "x" * notices.MAX_PAYLOAD_BYTES}}
    raw = notices.payload(("t", None, None), big)
    assert raw is not None and len(raw.encode()) <= notices.MAX_PAYLOAD_BYTES
    task_id, endpoint, webhook_to, *rest = orjson.loads(raw)
    assert task_id == "t" and rest == [] and notices.carried_state(rest, 0) is None


def test_a_notice_of_an_earlier_writer_carries_no_state() -> None:
    assert notices.carried_state([], 0) is None
    assert notices.carried_state(["tenant-a"], 1) is None  # a queued notice: tenant, no state
    assert notices.carried_state(["tenant-a", "not a state"], 1) is None


def test_noticed_states_are_taken_once_bounded_and_kept_only_when_asked() -> None:
    kept = notices.NoticedStates(keep=2)
    for i in range(3):
        kept.put(f"t{i}", {"seq": i})
    assert len(kept) == 2 and kept.take("t0") is None  # the oldest went first
    assert kept.take("t2") == {"seq": 2} and kept.take("t2") is None
    kept.put("t1", None)  # a later notice without a state: the older one must not be used
    assert kept.take("t1") is None
    off = notices.NoticedStates(keep=0)
    off.put("t", {"seq": 1})
    assert len(off) == 0


async def test_the_in_memory_log_carries_what_it_committed() -> None:
    log = InMemoryEventLog()
    await log.listen_ended(lambda *_: None, keep_states=True)
    state = await log.append("t", 0, [submitted()])
    carried = log.queued_states.take("t")
    assert carried is not None and state_from_json(carried) == state
    state = await log.append("t", state.seq, [
        events.TaskDispatched(endpoint="e", prompt_id="p", attempt=1),
        events.TaskSucceeded(prompt_id="p"),
    ], state)
    assert state.status == task_state.SUCCEEDED
    ended = log.ended_states.take("t")
    assert ended == orjson.loads(orjson.dumps(state_to_json(state)))
