"""The client and the `comfy-fleet` command against the running service (real Ray Serve,
PostgreSQL, S3 and ComfyUI stand-ins): submit, wait and download; pages; a stream cut by a
proxy and resumed with Last-Event-ID; a failed task (exit status 1); cancel; batches (when
served); a bad key; an unreachable server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web
from PIL import Image

from comfy_fleet_client import AsyncClient, Client, errors, models, verify_webhook
from comfy_fleet_devstack.tcp_proxy import TcpProxy
from tests.support.fleet import WEBHOOK_SECRET, Fleet, Receiver, free_port
from tests.support.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

CLIENT_SRC = str(Path(__file__).resolve().parents[2] / "clients" / "python")


async def cli(*args: str, url: str | None = None, key: str | None = None) -> tuple[int, str, str]:
    """Run `python -m comfy_fleet_client ARGS` as a user would; (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_FLEET_")}
    env["PYTHONPATH"] = os.pathsep.join([CLIENT_SRC, env.get("PYTHONPATH", "")])
    if url:
        env["COMFY_FLEET_URL"] = url
    if key:
        env["COMFY_FLEET_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_fleet_client", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def knobs(fleet: Fleet, values: dict) -> None:
    async with httpx.AsyncClient() as c:
        for s in fleet.standins:
            r = await c.post(f"{s.url}/_standin/knobs", json=values)
            assert r.status_code == 200, r.text


@pytest.fixture
async def slow_nodes(fleet: Fleet) -> AsyncIterator[None]:
    """Every node takes 0.4 s, so a task is still running while the test acts on it."""
    await knobs(fleet, {"node_delay": 0.4})
    try:
        yield
    finally:
        await knobs(fleet, {"node_delay": 0.0})


@pytest.fixture
async def stalled(fleet: Fleet) -> AsyncIterator[None]:
    """The stand-ins accept prompts but run none, so a task waits until it is cancelled."""
    await knobs(fleet, {"stall_worker": True})
    try:
        yield
    finally:
        await knobs(fleet, {"stall_worker": False})


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (6, 4), (10, 200, 30)).save(path)
    return path


async def test_submit_wait_and_download_verified_outputs(fleet: Fleet, tmp_path: Path) -> None:
    async with AsyncClient(fleet.url) as c:
        task = await c.submit("solid", {"width": 16, "height": 8, "color": 0xFF0000})
        assert task.status in ("queued", "dispatched", "running", "succeeded")
        final = await c.wait(task.task_id, timeout=60)
        assert final.status == "succeeded" and len(final.outputs) == 1
        [path] = await c.download_outputs(final, tmp_path / "out")
    blob = path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == final.outputs[0].sha256
    assert Image.open(io.BytesIO(blob)).size == (16, 8)

    def sync_path() -> tuple[models.Task, list[Path], list[models.Event]]:
        with Client(fleet.url) as sc:
            t = sc.submit("solid", {"width": 4, "height": 4}, client_task_id=f"sync-{task.task_id}", wait=60)
            return t, sc.download_outputs(t.task_id, tmp_path / "sync"), sc.events(t.task_id)

    done, files, evs = await asyncio.to_thread(sync_path)
    assert done.status == "succeeded" and done.client_task_id == f"sync-{task.task_id}"
    assert [f.name for f in files] == [done.outputs[0].filename]
    assert evs[0].type == "task.submitted" and evs[-1].seq == len(evs)


async def test_list_iterates_pages_newest_first(fleet: Fleet) -> None:
    async with AsyncClient(fleet.url) as c:
        ours = [(await c.submit("solid", {"width": 4 + i, "height": 4})).task_id for i in range(3)]
        listed = [t.task_id async for t in c.list(workflow="solid", page_size=2, limit=3)]
        assert listed == ours[::-1]
        everything = [t.task_id async for t in c.list(page_size=2)]
        assert len(everything) == len(set(everything)) and set(ours) <= set(everything)
        for t in ours:
            await c.wait(t, timeout=60)


async def test_a_dropped_stream_resumes_with_last_event_id(fleet: Fleet, slow_nodes: None) -> None:
    target = urlsplit(fleet.url)
    assert target.hostname and target.port
    async with TcpProxy(target.hostname, target.port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}{target.path}"
        async with AsyncClient(url) as c:
            sent: list[str | None] = []

            async def record(request: httpx.Request) -> None:
                if request.url.path.endswith("/stream"):
                    sent.append(request.headers.get("last-event-id"))

            c._http.event_hooks["request"].append(record)
            task = await c.submit("solid", {"width": 8, "height": 8})
            seen: list[models.Event] = []
            async for event in c.stream(task.task_id):
                if isinstance(event, models.Event):
                    seen.append(event)
                    if len(seen) == 2:
                        await proxy.pause()  # resets the connection mid-stream
                        await proxy.resume()
            recorded = await c.events(task.task_id)
    assert sent[0] is None and "2" in sent[1:], sent
    seqs = [e.seq for e in seen]
    assert seqs == list(range(1, len(seqs) + 1)), "an event was lost or repeated"
    assert seen[-1].type == "task.succeeded"
    assert [e.type for e in seen] == [e.type for e in recorded[: len(seen)]]


async def test_a_failed_task_exits_1_with_one_line(fleet: Fleet) -> None:
    await knobs(fleet, {"fail": [{"node": "SaveImage", "count": 1, "exception_message": "disk on fire"}]})
    try:
        status, out, err = await cli("submit", "solid", "-p", "width=8", "-p", "height=8", "--wait", url=fleet.url)
    finally:
        await knobs(fleet, {"fail": []})
    assert status == 1, (out, err)
    [line] = err.splitlines()
    assert "failed" in line and "comfyui_execution_error" in line and "disk on fire" in line
    task_id = out.split()[0]
    status, out, err = await cli("task", task_id, "--json", url=fleet.url)
    assert status == 0 and json.loads(out)["error"]["node_type"] == "SaveImage"
    status, _out, err = await cli("watch", task_id, url=fleet.url)
    assert status == 1 and len(err.splitlines()) == 1


async def test_command_submits_an_image_file_and_downloads_outputs(fleet: Fleet, png_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "outputs"
    status, out, err = await cli(
        "submit", "invert", "-p", f"image={png_file}", "--wait", "--out", str(out_dir), "--json",
        "--progress", "always", url=fleet.url,
    )
    assert status == 0, err
    task = json.loads(out)
    assert task["status"] == "succeeded"
    [downloaded] = [Path(p) for p in task["downloaded"]]
    assert downloaded.parent == out_dir
    inverted = Image.open(downloaded).convert("RGB")
    # ComfyUI inverts in float32 and truncates: 255 - v, or one less.
    assert inverted.size == (6, 4)
    assert all(255 - v - 1 <= got <= 255 - v for got, v in zip(inverted.getpixel((1, 1)), (10, 200, 30), strict=True))
    assert "succeeded" in err  # the progress bar's last state, on stderr


async def test_command_lists_shows_and_cancels(fleet: Fleet, stalled: None) -> None:
    status, out, _ = await cli("workflows", url=fleet.url)
    assert status == 0 and "solid" in out and "invert" in out
    status, out, _ = await cli("endpoints", "--json", url=fleet.url)
    assert status == 0 and {e["endpoint"] for e in json.loads(out)} == {s.host_port for s in fleet.standins}
    status, out, _ = await cli("submit", "solid", "-p", "width=8", "-p", "height=8", url=fleet.url)
    assert status == 0
    task_id, _ = out.split()
    status, out, _ = await cli("cancel", task_id, url=fleet.url)
    assert status == 0 and out.startswith(task_id)
    status, out, err = await cli("watch", task_id, "--timeout", "60", url=fleet.url)
    assert status == 1 and out.split() == [task_id, "cancelled"] and "cancelled" in err
    status, out, _ = await cli("tasks", "--limit", "3", "--json", url=fleet.url)
    assert status == 0 and task_id in [t["task_id"] for t in json.loads(out)]
    status, out, _ = await cli("task", task_id, url=fleet.url)
    assert status == 0 and "status:" in out and "cancelled" in out


async def test_wait_and_watch_give_up_after_their_timeout(fleet: Fleet, stalled: None) -> None:
    async with AsyncClient(fleet.url) as c:
        task = await c.submit("solid", {"width": 8, "height": 8})
        with pytest.raises(errors.WaitTimeout):
            await c.wait(task.task_id, timeout=0.3)
        status, _, err = await cli("watch", task.task_id, "--timeout", "0.3", url=fleet.url)
        assert status == 2 and len(err.splitlines()) == 1 and "wait_timeout" in err
        await c.cancel(task.task_id)
        assert (await c.wait(task.task_id, timeout=60)).status == "cancelled"


async def test_command_names_the_problem_of_a_bad_request(fleet: Fleet) -> None:
    status, _, err = await cli("submit", "no_such_workflow", url=fleet.url)
    assert status == 2 and len(err.splitlines()) == 1
    assert "workflow_not_found (404)" in err and "no_such_workflow" in err
    status, _, err = await cli("submit", "solid", "-p", "width=0", url=fleet.url)
    assert status == 2 and len(err.splitlines()) == 1 and "width" in err and "(422)" in err
    status, _, err = await cli("submit", "invert", "-p", "image=./not/here.png", url=fleet.url)
    assert status == 2 and err.strip() == "comfy-fleet: image parameter 'image': no file './not/here.png'"
    status, _, err = await cli("submit", url=fleet.url)
    assert status == 2 and len(err.splitlines()) == 1 and "workflow" in err
    status, _, err = await cli("task", "00000000-0000-0000-0000-000000000000", url=fleet.url)
    assert status == 2 and "(404)" in err and len(err.splitlines()) == 1


async def test_batches_sweep_when_the_service_serves_them(fleet: Fleet) -> None:
    async with AsyncClient(fleet.url) as c:
        try:
            batch = await c.create_batch(workflow="solid", params={"height": 4}, sweep={"width": [4, 5]})
        except errors.NotFound as exc:
            if exc.code != "not_found":
                raise
            pytest.skip("this service does not serve POST /batches yet (CONTRACT §7.2): 404 for the route")
        assert len(batch.task_ids) == 2
        finals = [await c.wait(t, timeout=60) for t in batch.task_ids]
        assert all(t.succeeded and t.batch_id == batch.batch_id for t in finals)
        again = await c.get_batch(batch.batch_id)
        assert again.counts.get("succeeded") == 2
    status, out, _ = await cli("batch", "solid", "--sweep", "width=4,5", "-p", "height=4", "--wait", url=fleet.url)
    assert status == 0, out


# --- a bad key and an unreachable server ------------------------------------------------------


@pytest.fixture
async def locked_server() -> AsyncIterator[str]:
    """A tiny server that answers every request as the service does without a valid key."""

    async def refuse(_request: web.Request) -> web.Response:
        body = {"error": {"code": "unauthorized",
                          "message": "this API needs an API key: send 'Authorization: Bearer <key>'"}}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="comfy-fleet"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        await runner.cleanup()


async def test_a_bad_key_is_one_line_naming_the_key(locked_server: str) -> None:
    status, out, err = await cli("workflows", url=locked_server, key="wrong")
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("comfy-fleet: unauthorized (401):") and "COMFY_FLEET_KEY" in line
    async with AsyncClient(locked_server, "wrong") as c:
        with pytest.raises(errors.Unauthorized) as info:
            await c.workflows()
    assert info.value.status == 401 and info.value.code == "unauthorized"


async def test_an_unreachable_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    status, out, err = await cli("tasks", "--url", url)
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert "cannot reach the server at " + url in line
    with Client(url) as c, pytest.raises(errors.Unreachable):
        c.endpoints()


# --- webhooks, reruns, and the models against the OpenAPI document ------------------------------


async def test_webhooks_verify_with_the_client_and_can_be_redelivered(fleet: Fleet, receiver: Receiver) -> None:
    async with AsyncClient(fleet.url) as c:
        task = await c.submit("solid", {"width": 4, "height": 4}, callback_url=receiver.url)
        await c.wait(task.task_id, timeout=60)
        [first] = await receiver.wait_for(task.task_id)
        event = verify_webhook(first["body"], first["headers"], WEBHOOK_SECRET)
        assert event.type == "task.succeeded" and event.task is not None and event.task.task_id == task.task_id
        with pytest.raises(errors.WebhookVerificationError):
            verify_webhook(first["body"] + b" ", first["headers"], WEBHOOK_SECRET)
        await eventually(
            lambda: _webhook_settled(c, task.task_id), timeout=30, what="first delivery recorded"
        )
        again = await c.redeliver_webhook(task.task_id)
        assert again.task_id == task.task_id
        calls = await receiver.wait_for(task.task_id, count=2)
        assert calls[0]["headers"]["webhook-id"] == calls[1]["headers"]["webhook-id"]
        with pytest.raises(errors.Conflict):
            await c.redeliver_webhook((await c.submit("solid", {"width": 4, "height": 5})).task_id)


async def _webhook_settled(c: AsyncClient, task_id: str) -> bool:
    return (await c.get(task_id)).webhook == "delivered"


async def test_rerun_when_the_service_serves_it(fleet: Fleet) -> None:
    async with AsyncClient(fleet.url) as c:
        task = await c.submit("solid", {"width": 4, "height": 6}, wait=60)
        try:
            again = await c.rerun(task.task_id)
        except errors.NotFound as exc:
            if exc.code != "not_found":
                raise
            pytest.skip("this service does not serve POST /tasks/{id}/rerun yet (CONTRACT §7.3): 404 for the route")
        assert again.task_id != task.task_id and again.rerun_of == task.task_id
        assert (await c.wait(again.task_id, timeout=60)).succeeded


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


async def test_models_cover_the_documented_task_schema(fleet: Fleet) -> None:
    root = fleet.url[: -len(fleet.settings.route_prefix)] if fleet.settings.route_prefix else fleet.url
    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"{root}/openapi.json")).json()
    operation = next(
        (op for item in doc.get("paths", {}).values() for op in item.values()
         if isinstance(op, dict) and op.get("operationId") == "getTask"),
        None,
    )
    schema = (
        ((operation or {}).get("responses", {}).get("200", {}).get("content", {})
         .get("application/json", {}).get("schema"))
    )
    if not schema:
        pytest.skip("the OpenAPI document has no getTask response schema yet (CONTRACT §7.7)")
    task_schema = _resolve(doc, schema)
    documented = set(task_schema.get("properties", {}))
    assert documented <= set(models.Task.model_fields), documented - set(models.Task.model_fields)
    required = {n for n, f in models.Task.model_fields.items() if f.is_required()}
    assert required <= documented
