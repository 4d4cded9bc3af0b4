"""The router's LISTEN connection to PostgreSQL is cut (its backend terminated) and a task's end
is committed while it is down: that notice is lost, and the router must catch up from the log
when it listens again, or the endpoint would look busy with the task for good."""

from __future__ import annotations

import random
import uuid

import pytest

from actors.router import Router
from comfy_fleet.log import events
from comfy_fleet.config import Settings
from comfy_fleet.log.postgres import PostgresEventLog
from tests.support.listener_cut import cut_listener
from tests.support.polling import eventually
from tests.support.router_fakes import RecordingEndpoint

pytestmark = [pytest.mark.postgres]


async def submit(log: PostgresEventLog) -> str:
    task_id = str(uuid.uuid4())
    await log.append(task_id, 0, [events.TaskSubmitted(workflow="solid", workflow_version="v1", params={}, prompt={})])
    return task_id


async def test_an_end_committed_while_the_listener_is_cut_is_caught_up(pg_dsn: str) -> None:
    log = await PostgresEventLog.connect(pg_dsn)
    ep = RecordingEndpoint(log)
    router = Router(
        settings=Settings(endpoint_queue_depth=1), log=log, endpoints={ep.name: ep},
        rng=random.Random(3),
    )
    try:
        await router.start()
        first, second = await submit(log), await submit(log)
        await eventually(lambda: ep.dispatched == [first], what="the first task dispatched")

        pid = await cut_listener(log, pg_dsn)

        # The endpoint records the end now: nobody listens, the notice is lost.
        state = await log.get(first)
        await log.append(first, state.seq, [events.TaskSucceeded(prompt_id=f"p-{first}")], state)

        await eventually(lambda: ep.dispatched == [first, second], timeout=15, what="caught up: the slot freed")
        assert router.assigned[ep.name] == {second}
        assert log._notify_conn is not None and log._notify_conn.get_server_pid() != pid  # noqa: SLF001
    finally:
        await router.stop()
        await log.close()
