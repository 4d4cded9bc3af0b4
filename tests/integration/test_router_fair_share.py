"""The router's fair share survives a restart (real PostgreSQL): the share is rebuilt from the
log (the tenants of the logged dispatches, then the queued tasks), so a new router makes the
next choices the first one would have made."""

from __future__ import annotations

import random
import uuid

import pytest

from actors.router import Router
from comfy_fleet.config import Settings
from comfy_fleet.log import events
from comfy_fleet.log.postgres import PostgresEventLog
from tests.support.polling import eventually
from tests.support.router_fakes import RecordingEndpoint

pytestmark = [pytest.mark.postgres]

WEIGHTS = (("acme", 3), ("beta", 1))


async def seed(log: PostgresEventLog) -> dict[str, str]:
    """acme floods, beta and gamma submit a few, one a priority within its tenant: task → label."""
    labels: dict[str, str] = {}
    for tenant, n in (("acme", 14), ("beta", 5), ("gamma", 5)):
        for i in range(n):
            task_id = str(uuid.uuid4())
            await log.append(task_id, 0, [events.TaskSubmitted(
                workflow="solid", workflow_version="v1", params={}, prompt={}, tenant=tenant,
                priority=10 if i == n - 1 else 0,
            )])
            labels[task_id] = f"{tenant}{i}"
    return labels


async def finish(log: PostgresEventLog, task_id: str) -> None:
    state = await log.get(task_id)
    await log.append(task_id, state.seq, [events.TaskSucceeded(prompt_id=f"p-{task_id}")], state)


async def run(
    log: PostgresEventLog, ep: RecordingEndpoint, n: int, *, finish_last: bool = True
) -> list[str]:
    """One slot: let `n` tasks run one after another; their ids in dispatch order. With
    `finish_last` False the last one still runs (so its slot stays taken)."""
    start = len(ep.dispatched)
    for i in range(n):
        await eventually(lambda i=i: len(ep.dispatched) > start + i, timeout=15, what=f"dispatch {i + 1}")
        if finish_last or i < n - 1:
            await finish(log, ep.dispatched[start + i])
    return ep.dispatched[start:start + n]


def new_router(log: PostgresEventLog, ep: RecordingEndpoint) -> Router:
    return Router(
        settings=Settings(endpoint_queue_depth=1, tenant_weights=WEIGHTS), log=log,
        endpoints={ep.name: ep}, rng=random.Random(5),
    )


async def scenario(dsn: str, restart_after: int | None, total: int = 20) -> list[str]:
    log = await PostgresEventLog.connect(dsn)
    routers: list[Router] = []
    try:
        labels = await seed(log)
        ep = RecordingEndpoint(log)
        routers.append(new_router(log, ep))
        await routers[-1].start()
        if restart_after is None:
            done = await run(log, ep, total)
        else:
            # The router stops while its last task runs (its one slot taken: it hands out
            # nothing more); the task ends while no router runs.
            done = await run(log, ep, restart_after, finish_last=False)
            await routers[-1].stop()
            await finish(log, done[-1])
            routers.append(new_router(log, ep))
            await routers[-1].start()
            done += await run(log, ep, total - restart_after)
        return [labels[t] for t in done]
    finally:
        for r in routers:
            await r.stop()
        await log.close()


async def test_the_fair_share_survives_a_restart(pg_admin_dsn: str, pg_template: str) -> None:
    import asyncpg

    from comfy_fleet_devstack.postgres import with_database

    dsns = []
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        for _ in range(3):
            name = f"cf_test_fair_{uuid.uuid4().hex[:10]}"
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
            dsns.append((name, with_database(pg_admin_dsn, name)))
        straight = await scenario(dsns[0][1], None)
        # Weights 3:1:1 while all three wait: acme 3 of every 5 dispatches; priority only
        # within a tenant (each tenant's last-submitted task, priority 10, is its first).
        assert [label[:-1].rstrip("0123456789") for label in straight[:10]].count("acme") == 6
        assert straight[0] in ("acme13", "beta4", "gamma4")
        assert {"beta4", "gamma4"} <= set(straight[:5])
        for cut, (_, dsn) in zip((4, 9), dsns[1:], strict=True):
            assert await scenario(dsn, cut) == straight, f"restart after {cut} dispatches"
    finally:
        for name, _ in dsns:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
