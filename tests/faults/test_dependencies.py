"""PostgreSQL, S3 or a webhook receiver goes away for 10 s: nothing acknowledged is lost, the
API refuses what it cannot record (503 + Retry-After), and every end is delivered once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import FaultFleet
from tests.support.invariants import check_tasks, wait_final
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

OUTAGE_S = 10.0
REPO = Path(__file__).resolve().parents[2]


def _all_succeeded(checked: dict) -> None:
    assert all(c.status == "succeeded" for c in checked.values()), {
        t: c.task["error"] for t, c in checked.items() if c.status != "succeeded"
    }


async def test_postgres_down_10s_refuses_new_tasks_and_loses_none(fleet: FaultFleet) -> None:
    for i in range(3):
        await fleet.knobs(i, node_delay=0.3)
    ids = await fleet.submit(20)
    loop = asyncio.get_running_loop()
    await fleet.bg.arun(fleet.pg_proxy.pause())
    down_at = loop.time()
    refused = 0
    try:
        while loop.time() - down_at < OUTAGE_S:
            r = await fleet.http.post(
                "/tasks", json={"workflow": "solid", "params": {"width": 8, "height": 8}}
            )
            if r.status_code == 202:  # never acknowledged unless recorded: keep it in the check
                ids.append(r.json()["task_id"])
                raise AssertionError("POST /tasks answered 202 while PostgreSQL was unreachable")
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"], r.text
            assert int(r.headers["retry-after"]) > 0
            refused += 1
            ready = await fleet.http.get("/readyz")
            assert ready.status_code == 503, ready.text
            await asyncio.sleep(1.0)
    finally:
        await asyncio.sleep(max(0.0, OUTAGE_S - (loop.time() - down_at)))
        await fleet.bg.arun(fleet.pg_proxy.resume())
    assert refused > 0

    async def ready() -> bool:
        return (await fleet.http.get("/readyz")).status_code == 200

    await eventually(ready, timeout=30, interval=0.2, what="/readyz after the outage")
    ids += await fleet.submit(6)
    _all_succeeded(await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=120))


def _command_env(fleet: FaultFleet) -> dict[str, str]:
    s = fleet.settings
    return {
        **os.environ,
        "DATABASE_URL": s.database_url or "",
        "S3_BUCKET": s.s3_bucket,
        "S3_REGION_NAME": s.s3_region,
        "S3_ENDPOINT_URL": s.s3_endpoint_url or "",
        "AWS_ACCESS_KEY_ID": s.aws_access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s.aws_secret_access_key or "",
        "DEFAULT_FAILED_IMAGE_PATH": str(s.default_failed_image_path),
        "PYTHONPATH": str(REPO),
    }


async def test_s3_down_10s_outputs_are_stored_or_kept_and_reuploaded(
    fleet: FaultFleet, tmp_path: Path
) -> None:
    for i in range(3):
        await fleet.knobs(i, node_delay=0.3)
    ids = await fleet.submit(20)
    await asyncio.to_thread(fleet.seaweed.stop)
    try:
        ids += await fleet.submit(6)  # accepted while S3 is away: solid has no input to stage
        await asyncio.sleep(OUTAGE_S)
    finally:
        await asyncio.to_thread(fleet.seaweed.start)
    finals = await wait_final(fleet.http, ids, timeout=90)
    kept = [t for t, v in finals.items() if v["status"] == "failed"]
    for tid in kept:
        assert finals[tid]["error"]["code"] == "storage_failed", finals[tid]
        for entry in finals[tid]["error"]["details"]["outputs"]:
            assert Path(entry["fallback_path"]).is_file(), entry
    if kept:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "comfy_fleet.cli.reupload", "--wait", "20",
            cwd=tmp_path, env=_command_env(fleet),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, out.decode()
    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=60)
    _all_succeeded(checked)
    for tid in kept:
        assert "task.outputs_recovered" in checked[tid].types()


async def test_webhook_receiver_down_10s_gets_every_end_once(fleet: FaultFleet) -> None:
    await fleet.receiver.down()
    try:
        ids = await fleet.submit(20)
        await asyncio.sleep(OUTAGE_S)
    finally:
        await fleet.receiver.up()
    checked = await check_tasks(
        fleet.http, ids, receiver=fleet.receiver, timeout=90, webhook_timeout=90
    )
    _all_succeeded(checked)
    retried = [c for c in checked.values() if "webhook.attempted" in c.types()]
    assert retried, "no delivery failed: the receiver outage did not hit"
    for tid in ids:
        ids_seen = {c.webhook_id for c in fleet.receiver.delivered(tid)}
        assert len(ids_seen) == 1, (tid, ids_seen)




async def test_dispatch_whose_commit_answer_is_lost_still_runs(fleet: FaultFleet) -> None:
    """The connection dies after PostgreSQL committed `task.dispatched` but before the endpoint
    heard so (what a database outage does to a statement in flight): the task still runs."""
    fleet.pg_lost_reply.arm(b"task.dispatched", count=2)
    ids = await fleet.submit(8)
    checked = await check_tasks(fleet.http, ids, receiver=fleet.receiver, timeout=60)
    _all_succeeded(checked)
    assert fleet.pg_lost_reply.dropped == 2, "the fault did not hit"
