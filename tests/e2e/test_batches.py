"""Batches and sweeps end to end (docs/api.md, "Batches and sweeps") through real Ray Serve
HTTP, PostgreSQL, SeaweedFS and stand-ins."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from comfy_fleet.delivery import webhooks
from tests.support.fleet import WEBHOOK_SECRET, Fleet, Receiver
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

STATUSES = {"queued", "dispatched", "running", "succeeded", "failed", "cancelled"}

NAMED_TOML = """
description = "A solid image whose file name is a parameter."
[params.width]
node = "1"
field = "width"
type = "int"
default = 8
[params.prefix]
node = "2"
field = "filename_prefix"
type = "string"
required = true
"""


def batch_calls(receiver: Receiver, batch_id: str) -> list[dict[str, Any]]:
    return [
        c for c in receiver.calls
        if c["json"].get("type") == "batch.completed" and c["json"]["batch"]["batch_id"] == batch_id
    ]


async def wait_completed(fleet: Fleet, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        batch = (await fleet.http.get(f"/batches/{batch_id}")).json()
        return batch if batch["status"] == "completed" else None

    found: dict[str, Any] = await eventually(done, timeout=timeout, interval=0.2, what="batch end")
    return found


async def submitted_params(fleet: Fleet, task_id: str) -> dict[str, Any]:
    evs = (await fleet.http.get(f"/tasks/{task_id}/events")).json()
    assert evs[0]["type"] == "task.submitted"
    params: dict[str, Any] = evs[0]["data"]["params"]
    return params


async def test_a_sweep_of_1000_in_one_request_and_one_signed_batch_webhook(
    fleet: Fleet, receiver: Receiver
) -> None:
    widths, heights, colors = list(range(1, 11)), list(range(1, 11)), list(range(0, 100, 10))
    r = await fleet.http.post("/batches", json={
        "workflow": "solid", "params": {"batch_size": 1},
        "sweep": {"width": widths, "height": heights, "color": colors},
        "callback_url": receiver.url,
    })
    assert r.status_code == 202, r.text
    batch = r.json()
    assert len(batch["task_ids"]) == len(set(batch["task_ids"])) == 1000
    assert batch["status"] == "running" and batch["tenant"] == "default"
    assert set(batch["counts"]) == STATUSES and sum(batch["counts"].values()) == 1000
    # The product's order: the last key varies fastest.
    ids = batch["task_ids"]
    for index, expected in ((0, (1, 1, 0)), (1, (1, 1, 10)), (10, (1, 2, 0)), (999, (10, 10, 90))):
        p = await submitted_params(fleet, ids[index])
        assert (p["width"], p["height"], p["color"]) == expected, index
    task = (await fleet.http.get(f"/tasks/{ids[5]}")).json()
    assert task["batch_id"] == batch["batch_id"]

    done = await wait_completed(fleet, batch["batch_id"])
    assert done["counts"]["succeeded"] == 1000 and done["finished_at"] is not None
    await eventually(lambda: batch_calls(receiver, batch["batch_id"]), timeout=30, what="webhook")
    await asyncio.sleep(1.0)  # a duplicate would arrive in this time
    calls = batch_calls(receiver, batch["batch_id"])
    assert len(calls) == 1
    body = calls[0]["json"]
    assert body["batch"]["status"] == "completed" and body["batch"]["counts"]["succeeded"] == 1000
    assert body["batch"]["task_ids"] == ids
    key = webhooks.parse_secret(WEBHOOK_SECRET)
    assert webhooks.verify(key, calls[0]["headers"], calls[0]["body"])
    # Only the batch's callback: its tasks have none of their own.
    assert all(c["json"].get("type") == "batch.completed" for c in receiver.calls)


async def test_a_bad_third_item_leaves_no_trace(fleet: Fleet) -> None:
    conn = await asyncpg.connect(fleet.settings.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM task_events")
        before_batches = await conn.fetchval("SELECT count(*) FROM batch_events")
        items: list[dict[str, Any]] = [
            {"workflow": "solid", "params": {"width": 4, "height": 4}, "client_task_id": f"nt-{i}"}
            for i in range(5)
        ]
        items[2]["params"]["width"] = -3
        r = await fleet.http.post("/batches", json={"tasks": items})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["details"]["index"] == 2 and "width" in err["message"]
        # An unknown workflow, a malformed item: also named by index, also nothing recorded.
        items[2] = {"workflow": "no_such_workflow", "params": {}}
        r = await fleet.http.post("/batches", json={"tasks": items})
        assert r.status_code == 422 and r.json()["error"]["details"]["index"] == 2
        items[2] = {"workflow": "solid", "parms": {}}
        r = await fleet.http.post("/batches", json={"tasks": items})
        assert r.status_code == 422 and r.json()["error"]["details"]["index"] == 2
        assert await conn.fetchval("SELECT count(*) FROM task_events") == before
        assert await conn.fetchval("SELECT count(*) FROM batch_events") == before_batches
        for i in range(5):
            listed = (await fleet.http.get("/tasks", params={"client_task_id": f"nt-{i}"})).json()
            assert listed["tasks"] == []
    finally:
        await conn.close()


async def test_client_batch_id_is_idempotent(fleet: Fleet) -> None:
    body = {
        "workflow": "solid", "params": {"height": 2}, "sweep": {"width": [1, 2, 3]},
        "client_batch_id": "idem-1",
    }
    first = await fleet.http.post("/batches", json=body)
    assert first.status_code == 202, first.text
    again = await fleet.http.post("/batches", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert again.json()["task_ids"] == first.json()["task_ids"]
    other = await fleet.http.post("/batches", json={**body, "sweep": {"width": [1, 2]}})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "client_batch_id_conflict"
    listed = (await fleet.http.get("/tasks", params={"batch_id": first.json()["batch_id"]})).json()
    assert len(listed["tasks"]) == 3


async def test_a_task_list_its_tasks_own_callbacks_and_the_listing(
    fleet: Fleet, receiver: Receiver
) -> None:
    items = [{"workflow": "solid", "params": {"width": 2 + i, "height": 2}} for i in range(12)]
    items[3]["callback_url"] = receiver.url
    items[4]["priority"] = 7
    r = await fleet.http.post(
        "/batches", json={"tasks": items, "priority": 3, "callback_url": receiver.url}
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    ids = batch["task_ids"]
    assert [(await submitted_params(fleet, t))["width"] for t in ids[:3]] == [2, 3, 4]
    assert (await fleet.http.get(f"/tasks/{ids[4]}")).json()["priority"] == 7
    assert (await fleet.http.get(f"/tasks/{ids[0]}")).json()["priority"] == 3
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"batch_id": batch["batch_id"], "limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await fleet.http.get("/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        assert all(t["batch_id"] == batch["batch_id"] for t in page["tasks"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first
    unknown = (await fleet.http.get("/tasks", params={"batch_id": "8" * 32})).json()
    assert unknown["tasks"] == []

    await wait_completed(fleet, batch["batch_id"])
    await eventually(lambda: batch_calls(receiver, batch["batch_id"]), timeout=30, what="hook")
    task_calls = [c for c in receiver.calls if "task" in c["json"]]
    assert [c["json"]["task"]["task_id"] for c in task_calls] == [ids[3]]
    assert len(batch_calls(receiver, batch["batch_id"])) == 1


async def test_index_in_a_string_param_of_a_sweep(fleet: Fleet) -> None:
    wf_dir = fleet.settings.workflows_dir
    (wf_dir / "solid_named.json").write_text((wf_dir / "solid.json").read_text())
    (wf_dir / "solid_named.toml").write_text(NAMED_TOML)
    assert (await fleet.http.post("/workflows/reload")).status_code == 200
    r = await fleet.http.post("/batches", json={
        "workflow": "solid_named", "params": {"prefix": "shot-{index}"},
        "sweep": {"width": [3, 4], "prefix": ["a{index}", "b-{index}-{name}"]},
    })
    assert r.status_code == 202, r.text
    ids = r.json()["task_ids"]
    got = [await submitted_params(fleet, t) for t in ids]
    assert [(p["width"], p["prefix"]) for p in got] == [
        (3, "a0"), (3, "b-1-{name}"), (4, "a2"), (4, "b-3-{name}"),
    ]
    r = await fleet.http.post("/batches", json={
        "workflow": "solid_named", "params": {"prefix": "p{index}"}, "sweep": {"width": [1, 2]},
    })
    prefixes = [(await submitted_params(fleet, t))["prefix"] for t in r.json()["task_ids"]]
    assert prefixes == ["p0", "p1"]
    await wait_completed(fleet, r.json()["batch_id"])


async def test_cancel_a_batch(fleet: Fleet) -> None:
    items = [{"workflow": "solid", "params": {"width": 64, "height": 64}} for _ in range(60)]
    r = await fleet.http.post("/batches", json={"tasks": items})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    c = await fleet.http.post(f"/batches/{batch_id}/cancel")
    assert c.status_code == 202, c.text
    assert c.json()["cancel_requested"] is True
    done = await wait_completed(fleet, batch_id)
    counts = done["counts"]
    assert counts["cancelled"] > 0 and counts["cancelled"] + counts["succeeded"] == 60, counts
    again = await fleet.http.post(f"/batches/{batch_id}/cancel")
    assert again.status_code == 202 and again.json()["counts"] == counts


async def test_unknown_and_malformed_batches_are_404_and_bodies_are_checked(fleet: Fleet) -> None:
    for bid in ("8" * 32, "nope"):
        r = await fleet.http.get(f"/batches/{bid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "batch_not_found"
        assert (await fleet.http.post(f"/batches/{bid}/cancel")).status_code == 404
    for body in (
        {},
        {"tasks": []},
        {"tasks": [{"workflow": "solid"}] * 1001},
        {"workflow": "solid", "params": {}},
        {"workflow": "solid", "sweep": {"width": list(range(1, 40)), "height": list(range(1, 40))}},
        {"tasks": [{"workflow": "solid"}], "sweep": {"width": [1]}},
        {"workflow": "solid", "sweep": {"width": []}},
    ):
        r = await fleet.http.post("/batches", content=json.dumps(body))
        assert r.status_code == 422, (body if len(str(body)) < 200 else "big", r.text)
        assert r.json()["error"]["message"]


async def test_a_batch_task_runs_by_version_and_can_be_rerun(fleet: Fleet) -> None:
    r = await fleet.http.post("/batches", json={
        "workflow": "solid", "params": {"height": 2}, "sweep": {"width": [3, 5]},
    })
    assert r.status_code == 202, r.text
    ids = r.json()["task_ids"]
    version = (await fleet.http.get("/workflows/solid")).json()["version"]
    for task_id in ids:
        submitted = (await fleet.http.get(f"/tasks/{task_id}/events")).json()[0]["data"]
        # as a single submit: the version and resolved params, the prompt rendered at dispatch
        assert (submitted["workflow_version"], submitted["prompt"]) == (version, {}), submitted
        assert submitted["batch_id"] == r.json()["batch_id"]
    listed = (await fleet.http.get("/workflows/solid/versions")).json()
    assert version in [v["version"] for v in listed if v["created_at"]]
    first = await fleet.wait_final(ids[0])
    assert first["status"] == "succeeded", first
    again = await fleet.http.post(f"/tasks/{ids[0]}/rerun")
    assert again.status_code == 202, again.text
    rerun = await fleet.wait_final(again.json()["task_id"])
    assert rerun["status"] == "succeeded", rerun
    assert (rerun["rerun_of"], rerun["workflow_version"]) == (ids[0], version)
    await wait_completed(fleet, r.json()["batch_id"])
