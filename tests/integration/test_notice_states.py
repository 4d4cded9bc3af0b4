"""The states the log's notices carry, through a real PostgreSQL: what the router and the webhook
dispatcher hear is the state the append committed, so they act without reading it; a state too
large for a notice is left out (the append still commits) and is read instead."""

from __future__ import annotations

import uuid

import pytest

from comfy_fleet.log import events, notices, task_state
from comfy_fleet.log.event_log import state_from_json
from comfy_fleet.log.postgres import PostgresEventLog
from tests.support.polling import eventually

pytestmark = [pytest.mark.postgres]


def submitted(text: str = "a cat") -> events.TaskSubmitted:
    return events.TaskSubmitted(
        workflow="solid", workflow_version="v1", params={"width": 8, "prompt": text}, prompt={},
        callback_url="http://hooks.example/x",
    )


async def test_notices_carry_the_committed_state_unless_it_is_too_large(pg_dsn: str) -> None:
    log = await PostgresEventLog.connect(pg_dsn)
    queued: list[str] = []
    ended: list[str] = []
    try:
        await log.listen_queued(lambda task_id, *_: queued.append(task_id))
        await log.listen_ended(lambda task_id, *_: ended.append(task_id), keep_states=True)
        small, large = str(uuid.uuid4()), str(uuid.uuid4())
        s_small = await log.append(small, 0, [submitted()])
        s_large = await log.append(large, 0, [submitted("x" * notices.MAX_PAYLOAD_BYTES)])
        await eventually(lambda: {small, large} <= set(queued), what="both queued notices")

        carried = log.queued_states.take(small)
        assert carried is not None and state_from_json(carried) == await log.get(small) == s_small
        assert log.queued_states.take(large) is None  # left out: read instead
        assert (await log.get(large)).seq == s_large.seq  # and the append committed all the same

        s_small = await log.append(small, s_small.seq, [
            events.TaskDispatched(endpoint="e", prompt_id="p", attempt=1),
            events.TaskSucceeded(prompt_id="p"),
        ], s_small)
        assert s_small.status == task_state.SUCCEEDED
        await eventually(lambda: small in ended, what="the ended notice")
        carried = log.ended_states.take(small)
        assert carried is not None and state_from_json(carried) == await log.get(small) == s_small
    finally:
        await log.close()
