"""`POST /tasks?wait=N`: many clients waiting do not starve the ingress."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

WAITERS = 200


async def _knobs(url: str, knobs: dict) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.post(f"{url}/_standin/knobs", json=knobs)).status_code == 200


async def test_200_waits_open_while_other_requests_are_served(fleet: Fleet) -> None:
    for s in fleet.standins:
        await _knobs(s.url, {"stall_worker": True})
    limits = httpx.Limits(max_connections=WAITERS + 20, max_keepalive_connections=WAITERS + 20)
    try:
        async with httpx.AsyncClient(base_url=fleet.url, timeout=120, limits=limits) as http:
            waits = [
                asyncio.create_task(
                    http.post("/tasks", params={"wait": 60},
                              json={"workflow": "solid", "params": {"width": 8, "height": 8, "color": i}})
                )
                for i in range(WAITERS)
            ]
            # Every waiter is recorded (its task exists) while none has been answered.
            for _ in range(300):
                listed = (await http.get("/tasks", params={"limit": 500, "status": "queued"})).json()["tasks"]
                dispatched = (await http.get("/tasks", params={"limit": 500, "status": "dispatched"})).json()["tasks"]
                if len(listed) + len(dispatched) >= WAITERS:
                    break
                await asyncio.sleep(0.1)
            assert not any(w.done() for w in waits)
            # Other requests are served meanwhile.
            for _ in range(20):
                assert (await http.get("/healthz")).status_code == 200
            r = await http.post("/tasks", json={"workflow": "solid", "params": {"width": 9, "height": 9}})
            assert r.status_code == 202
            assert (await http.get(f"/tasks/{r.json()['task_id']}")).status_code == 200
            assert not all(w.done() for w in waits)
            for s in fleet.standins:
                await _knobs(s.url, {"stall_worker": False})
            answers = await asyncio.gather(*waits)
    finally:
        for s in fleet.standins:
            await _knobs(s.url, {"stall_worker": False})
    assert [a.status_code for a in answers].count(200) + [a.status_code for a in answers].count(202) == WAITERS
    finished = [a.json() for a in answers if a.status_code == 200]
    assert finished and all(t["status"] == "succeeded" for t in finished)
