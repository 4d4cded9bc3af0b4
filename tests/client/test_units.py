"""The client's pure parts, no I/O: errors from answers, SSE decoding and resume, webhook
verification (against the service's own signer and the Standard Webhooks library), models,
the command's parameter syntax, output naming and integrity."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import standardwebhooks

from comfy_fleet.delivery import webhooks as server_webhooks
from comfy_fleet.workflows import registry as server_registry
from comfy_fleet_client import errors, models, outputs, protocol, sse, verify_webhook
from comfy_fleet_client.cli import params
from comfy_fleet_client.webhooks import sign

SECRET = "whsec_" + base64.b64encode(b"a test key of some length").decode()

TASK = {
    "task_id": "7f1c3c5e-2b7a-4a53-9d3e-1c2b3a4d5e6f", "client_task_id": None, "workflow": "solid",
    "status": "succeeded", "callback_url": None, "priority": 0, "attempt": 1,
    "endpoint": "127.0.0.1:8188", "comfyui_task_id": "p-1",
    "progress": {"value": 3, "max": 4, "node": "2"},
    "outputs": [{"node_id": "2", "filename": "solid_00001_.png", "content_type": "image/png", "size": 3,
                 "sha256": hashlib.sha256(b"abc").hexdigest(), "s3_key": "k/1", "url": "http://s3/x?sig=1"}],
    "error": None, "webhook": None,
    "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z", "finished_at": "2026-01-01T00:00:01Z",
}


def _answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b"oops"
    return httpx.Response(status, content=content, headers=headers or {}, request=httpx.Request("GET", "http://x/"))


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, errors.InvalidRequest), (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound),
     (409, errors.Conflict), (413, errors.InvalidRequest), (422, errors.InvalidRequest),
     (429, errors.RateLimited), (503, errors.Unavailable), (500, errors.ComfyFleetError)],
)
def test_error_class_by_status_carries_the_error_shape(status: int, cls: type) -> None:
    exc = errors.from_response(_answer(status, {"error": {"code": "some_code", "message": "why", "details": [1]}}))
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.details, exc.status) == ("some_code", "why", [1], status)
    assert isinstance(exc, errors.ComfyFleetError)


def test_rate_limited_reads_retry_after_and_non_json_answers_still_raise() -> None:
    exc = errors.from_response(_answer(429, {"error": {"code": "too_many", "message": "m"}}, {"Retry-After": "7"}))
    assert isinstance(exc, errors.RateLimited) and exc.retry_after == 7
    plain = errors.from_response(_answer(502))
    assert isinstance(plain, errors.Unavailable) and plain.code == "unavailable" and plain.status == 502
    server = errors.from_response(_answer(500))
    assert server.code == "server_error" and "500" in server.message


def test_errors_survive_pickling_and_timeouts_are_timeouts() -> None:
    exc = errors.RateLimited("slow down", code="c", details={"a": 1}, status=429, retry_after=3)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is errors.RateLimited
    assert (back.code, back.message, back.details, back.status, back.retry_after) == ("c", "slow down", {"a": 1}, 429, 3)
    assert isinstance(errors.WaitTimeout("late"), TimeoutError)
    unreachable = errors.from_transport(httpx.ConnectError("refused"), "http://h:1")
    assert isinstance(unreachable, errors.Unreachable) and "http://h:1" in unreachable.message
    assert unreachable.status is None


def test_result_refuses_an_answer_that_is_not_json() -> None:
    call = protocol.get("abc")
    with pytest.raises(errors.ComfyFleetError) as info:
        protocol.result(call, _answer(200))
    assert info.value.code == "bad_response"
    assert protocol.result(call, _answer(200, TASK)).task_id == TASK["task_id"]


# --- requests -----------------------------------------------------------------------------


def test_bodies_leave_out_unset_fields_and_paths_are_escaped() -> None:
    body = protocol.task_body("solid", {"width": 8}, priority=3)
    assert body == {"workflow": "solid", "params": {"width": 8}, "priority": 3}
    call = protocol.submit(body, wait=1000)
    assert (call.method, call.path, call.params) == ("POST", "/tasks", {"wait": protocol.MAX_SERVER_WAIT_S})
    assert protocol.get("a/b").path == "/tasks/a%2Fb"
    page = protocol.list_page(status="failed", limit=5)
    assert page.params == {"status": "failed", "limit": 5}
    batch = protocol.create_batch(workflow="solid", params={"width": 8}, sweep={"color": [1, 2]})
    assert batch.json == {"workflow": "solid", "params": {"width": 8}, "sweep": {"color": [1, 2]}}
    with pytest.raises(ValueError, match="either"):
        protocol.create_batch(workflow="solid", tasks=[body], sweep={"a": [1]})
    pinned = protocol.create_batch(workflow="solid", sweep={"color": [1]}, workflow_version="v1")
    assert pinned.json == {"workflow": "solid", "params": {}, "sweep": {"color": [1]},
                           "workflow_version": "v1"}
    with pytest.raises(ValueError, match="workflow_version"):
        protocol.create_batch(tasks=[body], workflow_version="v1")


def test_a_raw_graph_goes_instead_of_a_workflow_with_its_files() -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    files = {"a.png": b"\x89PNG raw", "b.png": "data:image/png;base64,iVBO",
             "c.png": "https://example.com/c.png", "d.png": "aGVsbG8="}
    body = protocol.task_body(graph=graph, files=files, tenant="acme", priority=1)
    assert body == {
        "graph": graph,
        "files": {"a.png": base64.b64encode(b"\x89PNG raw").decode(), "b.png": files["b.png"],
                  "c.png": files["c.png"], "d.png": "aGVsbG8="},
        "tenant": "acme", "priority": 1,
    }
    assert "workflow" not in body and "params" not in body
    assert protocol.task_body(graph=graph) == {"graph": graph}
    # The service's own rules, refused before anything is sent.
    with pytest.raises(ValueError, match="either"):
        protocol.task_body("solid", graph=graph)
    with pytest.raises(ValueError, match="either"):
        protocol.task_body()
    with pytest.raises(ValueError, match="params"):
        protocol.task_body(graph=graph, params={"width": 8})
    with pytest.raises(ValueError, match="files"):
        protocol.task_body("solid", files={"a.png": "aGVsbG8="})


def test_a_named_tenant_is_sent_with_the_task() -> None:
    body = protocol.task_body("solid", {"width": 8}, tenant="beta")
    assert body == {"workflow": "solid", "params": {"width": 8}, "tenant": "beta"}


def test_forbidden_is_the_tenant_keys_refusal() -> None:
    answer = {"error": {"code": "forbidden", "message": "this key may not read the fleet"}}
    exc = errors.from_response(_answer(403, answer))
    assert type(exc) is errors.Forbidden and exc.code == "forbidden" and exc.status == 403
    # Without the service's error shape (a proxy's 403) it is still Forbidden.
    bare = errors.from_response(_answer(403))
    assert type(bare) is errors.Forbidden and bare.status == 403


def test_settings_come_from_arguments_then_environment_then_default() -> None:
    assert protocol.settings_from_env(None, None, {}) == (protocol.DEFAULT_URL, None)
    env = {"COMFY_FLEET_URL": "http://h:9/api/v1/", "COMFY_FLEET_KEY": "k"}
    assert protocol.settings_from_env(None, None, env) == ("http://h:9/api/v1", "k")
    assert protocol.settings_from_env("http://o", "k2", env) == ("http://o", "k2")


# --- SSE ----------------------------------------------------------------------------------


def test_decoder_follows_the_event_stream_rules() -> None:
    lines = [": keep-alive", "", "id: 1", "event: task.submitted", "data: {\"a\":", "data: 1}", "",
             "retry: 500", "data:x", "", "event: queue", "data: {}", "unknown: field"]
    msgs = list(sse.decode(lines))
    assert msgs[0] == sse.Message(event="task.submitted", data='{"a":\n1}', id="1")
    assert msgs[1] == sse.Message(event="message", data="x", retry_ms=500)
    assert msgs[2].event == "queue" and msgs[2].id is None


def test_messages_become_typed_events() -> None:
    recorded = sse.Message("task.progressed", json.dumps(
        {"seq": 5, "type": "task.progressed", "at": "2026-01-01T00:00:00Z", "data": {"value": 1, "max": 4}, "new": 1}), "5")
    ev = sse.to_event(recorded)
    assert isinstance(ev, models.Event) and ev.seq == 5 and ev.data["max"] == 4 and not ev.is_final
    assert ev.model_extra == {"new": 1}
    queue = sse.to_event(sse.Message("queue", '{"position": 2, "eta_s": 3.5}'))
    assert isinstance(queue, models.QueueUpdate) and queue.position == 2
    preview = sse.to_event(sse.Message("preview", json.dumps({"content_type": "image/png", "data": "aGk="})))
    assert isinstance(preview, models.Preview) and preview.image == b"hi"
    other = sse.to_event(sse.Message("novel", "not json"))
    assert isinstance(other, models.StreamMessage) and other.data == "not json"


def test_resume_sends_the_last_id_and_gives_up_only_without_progress() -> None:
    r = sse.Resume(max_failures=2)
    assert "Last-Event-ID" not in r.headers()
    boom = errors.Unreachable("down")
    assert r.failed(boom) == pytest.approx(0.2) and r.failed(boom) == pytest.approx(0.4)
    msg = sse.Message("task.started", json.dumps({"seq": 3, "type": "task.started", "data": {}}), "3")
    r.seen(msg, sse.to_event(msg))
    assert r.headers()["Last-Event-ID"] == "3" and r.failures == 0
    r.failed(boom)
    r.failed(boom)
    with pytest.raises(errors.Unreachable):
        r.failed(boom)
    final = sse.Message("task.failed", json.dumps({"seq": 4, "type": "task.failed", "data": {}}), "4")
    r.seen(final, sse.to_event(final))
    assert r.ended


def test_deadline_checks() -> None:
    sse.check_deadline(None, "t")
    assert sse.read_timeout(None, 0) == sse.STREAM_READ_TIMEOUT_S
    assert sse.read_timeout(10.0, 8.0) == pytest.approx(2.0)
    with pytest.raises(errors.WaitTimeout):
        sse.check_deadline(10.0, "t", ahead_s=3, now=8.0)


# --- webhooks -----------------------------------------------------------------------------


def _signed_by_server(body: bytes, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    key = server_webhooks.parse_secret(SECRET)
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(ts),
            "Webhook-Signature": server_webhooks.sign(key, "msg_1", ts, body)}


def test_verify_webhook_accepts_the_services_signature_and_returns_the_event() -> None:
    body = json.dumps({"type": "task.succeeded", "task": TASK}).encode()
    event = verify_webhook(body, _signed_by_server(body), SECRET)
    assert event.type == "task.succeeded" and event.task is not None and event.task.succeeded
    # Key rotation: an unknown signature beside the valid one still verifies.
    headers = _signed_by_server(body)
    headers["Webhook-Signature"] = "v1,AAAA " + headers["Webhook-Signature"]
    assert verify_webhook(body.decode(), headers, SECRET).type == "task.succeeded"


def test_verify_webhook_agrees_with_the_standard_webhooks_library() -> None:
    body = json.dumps({"type": "batch.completed", "batch": {"batch_id": "b", "status": "completed"}})
    ts = datetime.now(UTC).replace(microsecond=0)
    lib = standardwebhooks.Webhook(SECRET)
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(int(ts.timestamp())),
               "webhook-signature": lib.sign("msg_2", ts, body)}
    event = verify_webhook(body.encode(), headers, SECRET)
    assert event.batch is not None and event.batch.batch_id == "b"
    ours = {**headers, "webhook-signature": sign(SECRET, "msg_2", int(ts.timestamp()), body.encode())}
    lib.verify(body, ours)  # the library accepts what we compute


@pytest.mark.parametrize(
    ("change", "code"),
    [("body", "webhook_invalid"), ("old", "webhook_timestamp"), ("missing", "webhook_invalid"),
     ("secret", "webhook_invalid")],
)
def test_verify_webhook_refuses_what_the_service_did_not_send(change: str, code: str) -> None:
    body = json.dumps({"type": "task.failed", "task": TASK}).encode()
    headers = _signed_by_server(body, ts=int(time.time()) - 1000 if change == "old" else None)
    secret = SECRET
    if change == "body":
        body = body.replace(b"failed", b"succeeded")
    elif change == "missing":
        del headers["Webhook-Signature"]
    elif change == "secret":
        secret = "whsec_" + base64.b64encode(b"another key").decode()
    with pytest.raises(errors.WebhookVerificationError) as info:
        verify_webhook(body, headers, secret)
    assert info.value.code == code


# --- models -------------------------------------------------------------------------------


def test_models_keep_fields_they_do_not_know() -> None:
    task = models.Task.model_validate({**TASK, "queue": {"position": 2, "eta_s": 1.5}, "shiny": True})
    assert task.is_final and task.queue is not None and task.queue.position == 2
    assert task.model_dump()["shiny"] is True
    assert task.outputs[0].sha256 == hashlib.sha256(b"abc").hexdigest()
    page = models.TaskPage.model_validate({"tasks": [TASK], "next_cursor": None})
    assert page.tasks[0].created_at == datetime(2026, 1, 1, tzinfo=UTC)
    ep = models.Endpoint.model_validate({"endpoint": "h:1", "state": "connected", "queue_remaining": 0,
                                         "inflight": 0, "labels": ["gpu"], "last_seen": None, "connected": True})
    assert ep.labels == ["gpu"]


def test_image_parameters_are_recognised_in_the_services_own_schemas() -> None:
    root = Path(__file__).resolve().parents[2] / "workflows"
    reg, problems = server_registry.WorkflowRegistry.load(root)
    assert problems == []
    described = {w.name: models.Workflow.model_validate(w.describe()) for w in reg.workflows()}
    assert described["invert"].is_image_param("image")
    assert not described["solid"].is_image_param("width")
    assert not described["text2img"].is_image_param("text")
    assert models.is_image_schema({"type": "string", "contentMediaType": "image/png"})


# --- command parameters ---------------------------------------------------------------------


def _workflow() -> models.Workflow:
    return models.Workflow(name="w", params={"type": "object", "properties": {
        "text": {"type": "string"}, "width": {"type": "integer"},
        "seed": {"oneOf": [{"type": "integer"}, {"const": "random"}]},
        "image": {"type": "string", "contentMediaType": "image/*"},
    }})


def test_parameter_values_parse_as_json_unless_the_schema_says_text(tmp_path: Path) -> None:
    png = tmp_path / "in.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n rest")
    got = params.build_params(
        ["text=123", "width=64", "seed=random", "other=[1, 2]", f"image={png}", "free=hello"], _workflow()
    )
    assert got["text"] == "123" and got["width"] == 64 and got["seed"] == "random"
    assert got["other"] == [1, 2] and got["free"] == "hello"
    assert got["image"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert params.build_params(["image=https://x/y.png"], _workflow())["image"] == "https://x/y.png"
    with pytest.raises(params.UsageError, match="no file"):
        params.build_params(["image=missing.png"], _workflow())
    with pytest.raises(params.UsageError, match="name=value"):
        params.build_params(["width"], _workflow())


def test_sweeps_split_on_commas_or_take_a_json_list() -> None:
    sweep = params.build_sweep(["width=8,16", 'text=["a, b","c"]'], _workflow())
    assert sweep == {"width": [8, 16], "text": ["a, b", "c"]}
    assert list(sweep) == ["width", "text"]
    with pytest.raises(params.UsageError, match="no values"):
        params.build_sweep(["width="], _workflow())


# --- outputs ------------------------------------------------------------------------------


def test_output_names_stay_inside_the_folder_and_are_unique(tmp_path: Path) -> None:
    task = models.Task.model_validate({**TASK, "outputs": [
        {"node_id": "2", "filename": "../../etc/passwd"}, {"node_id": "3", "filename": "a.png"},
        {"node_id": "4", "filename": "a.png"}, {"node_id": "4", "filename": "a.png"}]})
    paths = [p for _o, p in outputs.plan(task, tmp_path)]
    assert all(p.parent == tmp_path for p in paths)
    assert [p.name for p in paths] == ["passwd", "a.png", "4_a.png", "3_4_a.png"]


def test_sink_commits_only_matching_bytes(tmp_path: Path) -> None:
    task = models.Task.model_validate(TASK)
    out = task.outputs[0]
    good = outputs.Sink(out, tmp_path / "ok.png")
    good.write(b"ab")
    good.write(b"c")
    assert good.commit().read_bytes() == b"abc"
    bad = outputs.Sink(out, tmp_path / "bad.png")
    bad.write(b"abd")
    with pytest.raises(errors.IntegrityError, match="sha256"):
        bad.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]


# --- the command, without a server ------------------------------------------------------------


def test_usage_errors_are_one_line_with_status_2() -> None:
    import io

    from comfy_fleet_client import cli

    for argv in (["submit"], ["nonsense"], ["submit", "solid", "-p", "width"], []):
        out, err = io.StringIO(), io.StringIO()
        assert cli.main(argv, stdout=out, stderr=err) == 2, argv
        assert len(err.getvalue().splitlines()) == 1 and err.getvalue().startswith("comfy-fleet: ")
        assert out.getvalue() == ""


def test_error_lines_name_the_problem_and_the_remedy() -> None:
    from comfy_fleet_client import cli

    bad_key = errors.Unauthorized("this API needs an API key", code="unauthorized", status=401)
    assert cli.describe_error(bad_key, "u") == (
        "unauthorized (401): this API needs an API key; set COMFY_FLEET_KEY or --key to a valid key"
    )
    params_bad = errors.InvalidRequest("invalid\nparameters", code="params_invalid", status=422,
                                       details=[{"param": "width", "problem": "must be >= 1"}])
    assert cli.describe_error(params_bad, "u") == "params_invalid (422): invalid parameters [width: must be >= 1]"
    slow = errors.RateLimited("too many waiting", code="too_many_waiting", status=429, retry_after=4)
    assert cli.describe_error(slow, "u").endswith("; retry after 4s")


def test_progress_text_follows_the_task() -> None:
    from comfy_fleet_client.cli import follow

    state: dict[str, object] = {}

    def ev(seq: int, type_: str, **data: object) -> models.Event:
        return models.Event(seq=seq, type=type_, data=data)

    assert follow.describe(models.QueueUpdate(position=3, eta_s=12), state) == "queued: position 3, about 12s"
    assert follow.describe(ev(2, "task.dispatched", endpoint="h:1"), state) == "sent to h:1"
    assert follow.describe(ev(3, "task.started"), state) == "running on h:1"
    assert follow.describe(ev(6, "task.failed"), state) == "failed"
    assert follow.describe(ev(7, "webhook.delivered"), state) is None
