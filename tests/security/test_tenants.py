"""Keys, roles and tenants (docs/api.md §7.1) against the real service started as `make run`
starts it (real Ray, PostgreSQL, SeaweedFS and HTTP; ComfyUI stand-ins), with admin and tenant
keys: another tenant's task answers exactly as an unknown id on every route, the fleet routes
answer 403 to a tenant key, naming another tenant is 403, TENANT_MAX_WAITING holds one tenant
back while another goes on, and a task recorded before tenants existed reads as tenant
`default`. One service start for the whole module.

Tasks of the `parked` workflow need a label no endpoint has: they wait in the router for good,
which is what the waiting cap and the cancel of a waiting task need.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from comfy_fleet.log import event_log, events, task_state
from serve_app.ingress import WAITING_REFRESH_S
from tests.support.service_process import Service, free_port

pytestmark = [pytest.mark.postgres]

ADMIN, ACME, ACME_2, BETA, GAMMA = "admin-key-1", "acme-key-1", "acme-key-2", "beta-key-1", "gamma-key-1"
MAX_WAITING = 4
SOLID = {"workflow": "solid", "params": {"width": 8, "height": 8}}
PARKED = {"workflow": "parked", "params": {"width": 8, "height": 8}}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_dsn: str
) -> Iterator[tuple[Service, str]]:
    from comfy_fleet_devstack.postgres import create_database, drop_database, unique_database_name

    data = tmp_path_factory.mktemp("tenants")
    workflows = data / "workflows"
    shutil.copytree(Path(__file__).resolve().parents[2] / "workflows", workflows)
    shutil.copy(workflows / "solid.json", workflows / "parked.json")
    manifest = (workflows / "solid.toml").read_text()
    (workflows / "parked.toml").write_text('labels = ["nowhere"]\n' + manifest)
    db_name = unique_database_name("tenants")
    dsn = asyncio.run(create_database(pg_admin_dsn, db_name))
    svc = Service(
        data=data / "run",
        port=free_port(),
        env={
            "DATABASE_URL": dsn,
            "WORKFLOWS_DIR": str(workflows),
            "API_KEYS": ADMIN,
            "TENANT_KEYS": f"acme:{ACME},beta:{BETA},acme:{ACME_2},gamma:{GAMMA}",
            "TENANT_MAX_WAITING": str(MAX_WAITING),
        },
    )
    try:
        svc.start()
        svc.wait_ready()
        yield svc, dsn
    finally:
        svc.stop()
        asyncio.run(drop_database(pg_admin_dsn, db_name))


@pytest.fixture
async def http(service: tuple[Service, str]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client per key (and `none`, without one)."""
    svc, _ = service
    keys = {"admin": ADMIN, "acme": ACME, "acme2": ACME_2, "beta": BETA, "gamma": GAMMA}
    clients = {
        who: httpx.AsyncClient(base_url=svc.url, timeout=60, headers={"Authorization": f"Bearer {key}"})
        for who, key in keys.items()
    }
    clients["none"] = httpx.AsyncClient(base_url=svc.url, timeout=60)
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.aclose()


async def submit(client: httpx.AsyncClient, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = await client.post("/tasks", json=body, params=params)
    assert r.status_code in (200, 202), r.text
    task: dict[str, Any] = r.json()
    return task


async def held_by_router(client: httpx.AsyncClient, task_id: str, timeout_s: float = 30.0) -> None:
    """Wait until the router holds the task: GET shows its place in the queue."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        r = await client.get(f"/tasks/{task_id}")
        assert r.status_code == 200, r.text
        if r.json().get("queue") is not None:
            return
        assert asyncio.get_running_loop().time() < deadline, f"the router never held {task_id}"
        await asyncio.sleep(0.1)


def as_unknown(resp: httpx.Response, real_id: str, unknown_id: str) -> tuple[int, Any]:
    """The answer with the task's id written as the unknown one's, for comparing bodies."""
    return resp.status_code, orjson.loads(resp.content.replace(real_id.encode(), unknown_id.encode()))


async def test_another_tenants_task_answers_exactly_as_an_unknown_id(http: dict[str, httpx.AsyncClient]) -> None:
    acme, beta = http["acme"], http["beta"]
    done = await submit(beta, {**SOLID, "callback_url": "http://127.0.0.1:9/hook"}, wait=60)
    parked = await submit(beta, PARKED)
    assert done["tenant"] == parked["tenant"] == "beta" and done["status"] in ("succeeded", "failed")
    unknown = str(uuid.uuid4())
    for task in (done, parked):
        tid = task["task_id"]
        for method, path in [
            ("GET", "/tasks/{}"), ("GET", "/tasks/{}/events"), ("GET", "/tasks/{}/stream"),
            ("POST", "/tasks/{}/cancel"), ("POST", "/tasks/{}/webhook"),
            ("POST", "/tasks/{}/rerun"),
        ]:
            theirs = await acme.request(method, path.format(tid))
            nobodys = await acme.request(method, path.format(unknown))
            assert theirs.status_code == 404, (method, path, theirs.text)
            assert as_unknown(theirs, tid, unknown) == (404, nobodys.json()), (method, path)
            assert theirs.headers["content-type"] == nobodys.headers["content-type"]
            assert nobodys.json()["error"]["code"] == "task_not_found"
    # Nothing was done to beta's tasks; beta (and the admin) still see them as they were.
    for who in ("beta", "admin"):
        r = await http[who].get(f"/tasks/{parked['task_id']}")
        assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["tenant"] == "beta"
    # A second key of the same tenant is that tenant.
    assert (await http["acme2"].get(f"/tasks/{done['task_id']}")).status_code == 404
    mine = await submit(http["acme2"], SOLID)
    assert mine["tenant"] == "acme"
    assert (await acme.get(f"/tasks/{mine['task_id']}")).status_code == 200
    assert (await beta.post(f"/tasks/{parked['task_id']}/cancel")).status_code == 202


async def test_a_rerun_is_a_task_of_the_original_tenant(
    http: dict[str, httpx.AsyncClient],
) -> None:
    beta = http["beta"]
    parked = await submit(beta, PARKED)
    mine = await beta.post(f"/tasks/{parked['task_id']}/rerun", json={"params": {"width": 9}})
    assert mine.status_code == 202, mine.text
    assert mine.json()["tenant"] == "beta" and mine.json()["rerun_of"] == parked["task_id"]
    # an admin may rerun any task: the rerun is still the original tenant's
    by_admin = await http["admin"].post(f"/tasks/{parked['task_id']}/rerun")
    assert by_admin.status_code == 202 and by_admin.json()["tenant"] == "beta"
    for task in (parked, mine.json(), by_admin.json()):
        assert (await beta.post(f"/tasks/{task['task_id']}/cancel")).status_code == 202


async def test_listings_hold_only_the_keys_tenant(http: dict[str, httpx.AsyncClient]) -> None:
    ctid = f"shared-{uuid.uuid4()}"
    beta_task = await submit(http["beta"], {**SOLID, "client_task_id": ctid})
    # client_task_id is per tenant: the same id is acme's own task, and acme's again is the same.
    acme_task = await submit(http["acme"], {**SOLID, "client_task_id": ctid})
    again = await http["acme"].post("/tasks", json={**SOLID, "client_task_id": ctid})
    assert again.status_code == 200 and again.json()["task_id"] == acme_task["task_id"]
    assert acme_task["task_id"] != beta_task["task_id"]

    for who, own in (("acme", acme_task), ("beta", beta_task)):
        listed = (await http[who].get("/tasks", params={"limit": 500})).json()["tasks"]
        assert listed and {t["tenant"] for t in listed} == {who}
        by_ctid = (await http[who].get("/tasks", params={"client_task_id": ctid})).json()["tasks"]
        assert [t["task_id"] for t in by_ctid] == [own["task_id"]]
        assert (await http[who].get("/tasks", params={"tenant": who})).status_code == 200
    refused = await http["acme"].get("/tasks", params={"tenant": "beta"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    everyone = (await http["admin"].get("/tasks", params={"client_task_id": ctid})).json()["tasks"]
    assert {t["tenant"] for t in everyone} == {"acme", "beta"}
    only_beta = (await http["admin"].get("/tasks", params={"tenant": "beta", "limit": 500})).json()
    assert only_beta["tasks"] and {t["tenant"] for t in only_beta["tasks"]} == {"beta"}
    bad = await http["admin"].get("/tasks", params={"tenant": "Not A Tenant"})
    assert bad.status_code == 422


async def test_fleet_routes_are_admin_only(http: dict[str, httpx.AsyncClient]) -> None:
    for method, path, body in [
        ("GET", "/endpoints", None),
        ("POST", "/endpoints", {"endpoint": "127.0.0.1:5432"}),
        ("POST", "/endpoints", {"not": "a valid body"}),
        ("DELETE", "/endpoints/127.0.0.1:8188", None),
        ("POST", "/workflows/reload", None),
    ]:
        r = await http["acme"].request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    assert (await http["admin"].get("/endpoints")).status_code == 200
    assert (await http["none"].get("/endpoints")).status_code == 401
    # What a tenant key may read of the service: the workflows.
    assert (await http["acme"].get("/workflows")).status_code == 200
    assert (await http["acme"].get("/workflows/solid")).status_code == 200


async def test_naming_a_tenant(http: dict[str, httpx.AsyncClient]) -> None:
    r = await http["acme"].post("/tasks", json={**SOLID, "tenant": "beta"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await submit(http["acme"], {**SOLID, "tenant": "acme"}))["tenant"] == "acme"
    named = await submit(http["admin"], {**SOLID, "tenant": "beta"})
    assert named["tenant"] == "beta"
    assert (await http["beta"].get(f"/tasks/{named['task_id']}")).status_code == 200
    assert (await submit(http["admin"], SOLID))["tenant"] == "default"
    assert (await http["admin"].post("/tasks", json={**SOLID, "tenant": "Bad Name"})).status_code == 422
    # The original ComfyUI-server route: the task is the key's tenant's.
    route = str(http["beta"].base_url).rstrip("/")  # POST {ROUTE_PREFIX} itself, no slash
    legacy = await http["beta"].post(route, json={"service_type": "solid", "params": {"width": 8, "height": 8}})
    assert legacy.status_code == 200 and legacy.json()["task"]["tenant"] == "beta"


async def test_a_tenant_over_its_waiting_cap_is_held_back_while_others_go_on(
    http: dict[str, httpx.AsyncClient],
) -> None:
    gamma, beta = http["gamma"], http["beta"]
    admitted = [await submit(gamma, PARKED) for _ in range(MAX_WAITING)]
    # The router hears of new tasks from the log's notices (a task it holds shows its place in
    # the queue), and each ingress replica takes the router's counts every WAITING_REFRESH_S:
    # the cap is exact once both have happened, whichever replica answers.
    for task in admitted:
        await held_by_router(gamma, task["task_id"])
    await asyncio.sleep(2 * WAITING_REFRESH_S + 0.5)
    refused = await gamma.post("/tasks", json=PARKED)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another tenant goes on meanwhile.
    other = await beta.post("/tasks", json=PARKED)
    assert other.status_code == 202
    assert (await beta.post(f"/tasks/{other.json()['task_id']}/cancel")).status_code == 202
    # One of gamma's waiting tasks cancelled: gamma is under its cap again.
    assert (await gamma.post(f"/tasks/{admitted[0]['task_id']}/cancel")).status_code == 202
    again = await gamma.post("/tasks", json=PARKED)
    assert again.status_code == 202, again.text
    for task in admitted[1:] + [again.json()]:
        await gamma.post(f"/tasks/{task['task_id']}/cancel")


async def test_a_task_recorded_before_tenants_reads_as_tenant_default(
    service: tuple[Service, str], http: dict[str, httpx.AsyncClient]
) -> None:
    """Rolling upgrade: a task.submitted payload without `tenant` and a read-model row written
    without the column (as the release before tenants wrote them)."""
    _, dsn = service
    task_id = str(uuid.uuid4())
    at = datetime.now(UTC)
    submitted = events.TaskSubmitted(
        workflow="solid", workflow_version="v0", params={"width": 8}, prompt={},
        client_task_id=f"old-{task_id}", request_hash="h",
    ).payload()
    del submitted["tenant"]
    cancelled = events.TaskCancelled(where="router")
    state = task_state.apply(None, task_id, 1, at, events.decode("task.submitted", 1, submitted))
    state = task_state.apply(state, task_id, 2, at, cancelled)
    row = event_log.state_to_json(state)
    del row["tenant"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)"
            " VALUES ($1, $2, $3, 1, $4::jsonb, $5)",
            [(uuid.UUID(task_id), 1, "task.submitted", orjson.dumps(submitted).decode(), at),
             (uuid.UUID(task_id), 2, "task.cancelled", orjson.dumps(cancelled.payload()).decode(), at)],
        )
        await conn.execute(
            "INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook,"
            " last_seq, created_at, updated_at, state) VALUES ($1, $2, 'solid', 'cancelled', 0,"
            " NULL, 2, $3, $3, $4::jsonb)",
            uuid.UUID(task_id), f"old-{task_id}", at, orjson.dumps(row).decode(),
        )
    finally:
        await conn.close()
    admin = http["admin"]
    got = await admin.get(f"/tasks/{task_id}")
    assert got.status_code == 200 and got.json()["tenant"] == "default"
    assert got.json()["status"] == "cancelled"
    assert [e["type"] for e in (await admin.get(f"/tasks/{task_id}/events")).json()] == [
        "task.submitted", "task.cancelled"
    ]
    listed = (await admin.get("/tasks", params={"tenant": "default", "client_task_id": f"old-{task_id}"})).json()
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]
    # Tenant `default` is no tenant key's: to acme it is unknown.
    assert (await http["acme"].get(f"/tasks/{task_id}")).status_code == 404


# --- the client, the command and the OpenAPI document against the keyed service ---------------


async def test_the_command_with_a_bad_or_a_tenant_key_is_one_line(service: tuple[Service, str]) -> None:
    from tests.client.test_service import cli

    svc, _ = service
    status, out, err = await cli("workflows", url=svc.url, key="not-a-key")
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("comfy-fleet: unauthorized (401):") and "COMFY_FLEET_KEY" in line
    status, out, err = await cli("endpoints", url=svc.url, key=ACME)
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("comfy-fleet: forbidden (403):")
    status, out, _ = await cli("workflows", "--json", url=svc.url, key=ACME)
    assert status == 0 and "solid" in {w["name"] for w in orjson.loads(out)}


async def test_the_client_raises_the_tree_for_keys(service: tuple[Service, str]) -> None:
    from comfy_fleet_client import AsyncClient, errors as client_errors

    svc, _ = service
    async with AsyncClient(svc.url, "not-a-key") as c:
        with pytest.raises(client_errors.Unauthorized) as bad:
            await c.workflows()
    assert bad.value.status == 401 and bad.value.code == "unauthorized"
    async with AsyncClient(svc.url, BETA) as c:
        with pytest.raises(client_errors.Forbidden) as no:
            await c.endpoints()
        task = await c.submit("solid", {"width": 4, "height": 4})
    assert no.value.status == 403 and no.value.code == "forbidden"
    assert task.tenant == "beta"
    async with AsyncClient(svc.url, ACME) as c:
        with pytest.raises(client_errors.NotFound):
            await c.get(task.task_id)


async def test_every_answer_with_keys_is_documented(service: tuple[Service, str]) -> None:
    """Schemathesis against the service with keys: requests with a tenant's key (routes it may
    use answer as documented; fleet routes 403), and each operation also sent without a key
    (`ignored_auth`: it must answer 401 in the documented shape)."""
    import schemathesis

    from tests.support.openapi_checks import _config, _run

    svc, _ = service
    root = svc.url.removesuffix("/api/v1")
    config = _config(root)
    raw = config.__class__  # the config is rebuilt with the key and the auth check on
    data = {
        "seed": 14, "base-url": root, "request-timeout": 30,
        "suppress-health-check": ["all"],
        "headers": {"Authorization": f"Bearer {GAMMA}"},
        "generation": {"max-examples": 8, "deterministic": True, "mode": "all",
                       "database": "none"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
        "checks": {"ignored_auth": {"enabled": True},
                   "positive_data_acceptance": {"enabled": False}},
    }
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, root + "/openapi.json", config=raw.from_dict(data)
    )
    failures, sent = await asyncio.to_thread(_run, schema)
    operations = {
        f"{method.upper()} {path}"
        for path, ops in schema.raw_schema["paths"].items()
        for method in ops
    }
    assert operations <= set(sent), operations - set(sent)
    assert failures == [], "\n".join(sorted(set(failures)))
