"""Holes at the ingress (garbage a client can send), each tried against the running service
(real Ray, PostgreSQL and HTTP): every one answers a 4xx in the error shape naming the problem,
never a 500, and records nothing.

The memory bound of the body check is shown at unit level: tracemalloc's peak while
`json_bounds.check` refuses the body that would parse into 200 MiB.
"""

from __future__ import annotations

import tracemalloc
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from comfy_fleet import errors
from serve_app.middleware import json_bounds
from tests.support.fleet import Fleet

JSON_HEADERS = {"content-type": "application/json"}
SOLID = {"workflow": "solid", "params": {"width": 8, "height": 8}}
MIB = 1024 * 1024


def assert_error_shape(resp: httpx.Response, statuses: tuple[int, ...]) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:500]
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"code", "message"} <= set(err) <= {"code", "message", "details"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


async def submitted_count(fleet: Fleet) -> int:
    conn = await asyncpg.connect(fleet.settings.database_url)
    try:
        query = "SELECT count(*) FROM task_events WHERE type = 'task.submitted'"
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def solid_with(raw_param: bytes, ctid: str) -> bytes:
    return (
        b'{"workflow":"solid","client_task_id":"' + ctid.encode()
        + b'","params":{"width":8,"height":8,"extra":' + raw_param + b"}}"
    )


# --- the idempotency hash ran before validation --------------------------------------------

@pytest.mark.parametrize(
    ("raw_param", "words"),
    [
        pytest.param(nested_objects(300), ("deep",), id="objects_300_deep"),
        pytest.param(nested_arrays(300), ("deep",), id="arrays_300_deep"),
        pytest.param(b"123456789012345678901234567890", ("64-bit",), id="int_beyond_64_bits"),
        pytest.param(b"-99999999999999999999", ("64-bit",), id="negative_int_beyond_64_bits"),
        pytest.param(
            b'{"b":[1,2,18446744073709551616]}', ("64-bit", "extra.b.2"), id="nested_big_int"
        ),
        pytest.param(b'"a\\ud800b"', ("surrogate",), id="lone_surrogate"),
    ],
)
async def test_params_the_hash_cannot_take_are_422_and_nothing_is_recorded(
    fleet: Fleet, raw_param: bytes, words: tuple[str, ...]
) -> None:
    before = await submitted_count(fleet)
    ctid = f"hole-{uuid.uuid4().hex}"
    body = solid_with(raw_param, ctid)
    resp = await fleet.http.post("/tasks", content=body, headers=JSON_HEADERS)
    err = assert_error_shape(resp, (422,))
    text = (err["message"] + " " + str(err.get("details"))).lower()
    for word in words:
        assert word.lower() in text, err
    listed = (await fleet.http.get("/tasks", params={"client_task_id": ctid})).json()
    assert listed["tasks"] == []
    assert await submitted_count(fleet) == before


async def test_the_legacy_route_refuses_them_too(fleet: Fleet) -> None:
    before = await submitted_count(fleet)
    for raw in (nested_arrays(300), b"123456789012345678901234567890", b'"\\udfff"'):
        body = b'{"service_type":"solid","params":{"width":8,"height":8,"extra":' + raw + b"}}"
        resp = await fleet.http.post(fleet.url, content=body, headers=JSON_HEADERS)
        assert_error_shape(resp, (422,))
    assert await submitted_count(fleet) == before


# --- Last-Event-ID -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value",
    ["²".encode(), "٣".encode(), b"abc", b"-1", b"1.5", b"9" * 5000, b"99999999999999999999999"],
    ids=["superscript_two", "arabic_three", "letters", "negative", "decimal", "5000_digits",
         "huge"],
)
async def test_a_last_event_id_that_is_not_a_seq_is_400(fleet: Fleet, value: bytes) -> None:
    submitted = await fleet.http.post("/tasks", json=SOLID)
    assert submitted.status_code in (200, 202), submitted.text
    task_id = submitted.json()["task_id"]
    resp = await fleet.http.get(f"/tasks/{task_id}/stream", headers=[(b"last-event-id", value)])
    err = assert_error_shape(resp, (400, 422))
    assert "last-event-id" in err["message"].lower()
    await fleet.wait_final(task_id)


async def test_a_good_last_event_id_still_resumes(fleet: Fleet) -> None:
    submitted = await fleet.http.post("/tasks", json=SOLID)
    task_id = submitted.json()["task_id"]
    await fleet.wait_final(task_id)
    resp = await fleet.http.get(f"/tasks/{task_id}/stream", headers={"last-event-id": "1"})
    assert resp.status_code == 200
    ids = [int(line[4:]) for line in resp.text.splitlines() if line.startswith("id: ")]
    assert ids and min(ids) == 2


# --- bodies that parse into far more than they weigh -----------------------------------------

def list_of_empty_objects(size: int) -> bytes:
    count = size // 3
    return b"[" + b"{}," * (count - 1) + b"{}]"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(list_of_empty_objects(8 * MIB), id="top_level_list"),
        pytest.param(
            b'{"workflow":"solid","params":{"width":8,"height":8,"x":'
            + list_of_empty_objects(8 * MIB) + b"}}",
            id="inside_params",
        ),
        pytest.param(
            b'{"workflow":"solid","params":{"x":[' + b"0," * (4 * MIB) + b"0]}}", id="4m_numbers"
        ),
        pytest.param(
            b'{"workflow":"solid","params":{"x":[' + b'"",' * (2 * MIB) + b'""]}}', id="2m_strings"
        ),
    ],
)
async def test_an_8_mib_body_of_many_small_values_is_refused_before_parsing(
    fleet: Fleet, body: bytes
) -> None:
    before = await submitted_count(fleet)
    for path in ("/tasks", fleet.url, "/endpoints"):
        resp = await fleet.http.post(path, content=body, headers=JSON_HEADERS)
        err = assert_error_shape(resp, (422,))
        assert "limit" in err["message"], err
    assert await submitted_count(fleet) == before


def _peak_while(fn: Any, *args: Any) -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            fn(*args)
        except errors.InvalidRequest:
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (list_of_empty_objects(8 * MIB), True),
        (b"[" + b'"",' * (8 * MIB // 3) + b'""]', True),
        (b"[" + b'"[\\"",' * (8 * MIB // 6) + b'""]', True),
        (b"[" + b"0," * (4 * MIB) + b"0]", True),
        (b'{"a":"' + b'\\"[' * (8 * MIB // 3) + b'"}', False),
        (b'{"a":"' + b"A" * (8 * MIB) + b'"}', False),
    ],
    ids=["empty_objects", "empty_strings", "strings_of_brackets", "numbers",
         "one_string_of_escapes", "one_long_string"],
)
def test_the_body_check_costs_at_most_twice_the_body(body: bytes, refused: bool) -> None:
    # The parse this check stands in front of takes 100-500 MiB for the refused bodies.
    assert _peak_while(json_bounds.check, body) <= 2 * len(body)
    if refused:
        with pytest.raises(errors.InvalidRequest, match="limit"):
            json_bounds.check(body)
    else:
        json_bounds.check(body)


def test_a_body_at_the_bounds_is_let_through_and_parses_small() -> None:
    import json

    widest = b"[" + b"{}," * (json_bounds.MAX_CONTAINERS - 2) + b"{}]"
    json_bounds.check(widest)
    deepest = nested_arrays(json_bounds.MAX_DEPTH)
    json_bounds.check(deepest)
    with pytest.raises(errors.InvalidRequest, match="deep"):
        json_bounds.check(nested_arrays(json_bounds.MAX_DEPTH + 1))
    # Brackets, quotes and commas inside strings are text, not structure.
    json_bounds.check(b'{"text":"' + b'[{\\",' * 200_000 + b'"}')
    assert _peak_while(json.loads, widest) <= 16 * MIB


# --- garbage at every route ------------------------------------------------------------------

T = str(uuid.UUID(int=7))


def raw(content: bytes) -> dict[str, Any]:
    return {"content": content}


def solid_and(field: bytes) -> dict[str, Any]:
    """A solid task with one more top-level field (given as raw JSON)."""
    return raw(b'{"workflow":"solid","params":{},' + field + b"}")


def params_of(workflow: bytes, params: bytes) -> dict[str, Any]:
    return raw(b'{"workflow":"' + workflow + b'","params":' + params + b"}")


def legacy(fields: bytes) -> dict[str, Any]:
    return raw(b'{"service_type":"solid",' + fields + b"}")


#: (method, path relative to the API's prefix, "" for the legacy route; request kwargs)
GARBAGE: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/tasks", raw(b'{"workflow":"solid\xff\xfe","params":{}}')),
    ("POST", "/tasks", params_of(b"solid", b'{"x\xff":1}')),
    ("POST", "/tasks", params_of(b"solid", b'{"width":1e999}')),
    ("POST", "/tasks", params_of(b"solid", b'{"width":NaN}')),
    ("POST", "/tasks", params_of(b"solid", b'{"width":' + b"9" * 5000 + b"}")),
    ("POST", "/tasks", params_of(b"\\ud800", b"{}")),
    ("POST", "/tasks", solid_and(b'"client_task_id":"\\ud800"')),
    ("POST", "/tasks", solid_and(b'"client_task_id":"a\\u0000b"')),
    ("POST", "/tasks", solid_and(b'"callback_url":"http://\\ud800/"')),
    ("POST", "/tasks", solid_and(b'"callback_url":"http://[::1/"')),
    ("POST", "/tasks", solid_and(b'"callback_url":"http://a:99999/"')),
    ("POST", "/tasks", solid_and(b'"callback_url":"http://a\\u0000b.com/"')),
    ("POST", "/tasks", solid_and(b'"priority":' + b"9" * 5000)),
    ("POST", "/tasks", solid_and(b'"priority":1e999')),
    ("POST", "/tasks", params_of(b"text2img", b'{"text":"a\\ud800b"}')),
    ("POST", "/tasks", params_of(b"invert", b'{"image":"http://\\ud800/"}')),
    ("POST", "/tasks", params_of(b"invert", b'{"image":"data:image/png;base64,!!!!"}')),
    ("POST", "/tasks", params_of(b"invert", b'{"image":[]}')),
    ("POST", "/tasks", raw(b"\xff\xfe\x00\x01")),
    ("POST", "/tasks", raw(b"null")),
    ("POST", "/tasks", raw(b'"a string"')),
    ("POST", "/tasks?wait=nan", raw(b'{"workflow":"nope"}')),
    ("POST", "", legacy(b'"params":{"a":1e999}')),
    ("POST", "", raw(b'{"service_type":"\\ud800"}')),
    ("POST", "", raw(b"[1]")),
    ("POST", "", legacy(b'"client_callback_url":"http://\\ud800/"')),
    ("GET", "/tasks?cursor=%ff%fe", {}),
    ("GET", "/tasks?cursor=AAAA", {}),
    ("GET", "/tasks?cursor=eyJ4IjoxfQ", {}),
    ("GET", "/tasks?client_task_id=%00", {}),
    ("GET", "/tasks?workflow=%00", {}),
    ("GET", "/tasks?limit=99999999999999999999999", {}),
    ("GET", "/tasks/%ff", {}),
    ("GET", "/tasks/%00/events", {}),
    ("GET", f"/tasks/{T}/stream", {"headers": [(b"last-event-id", "²".encode())]}),
    ("POST", f"/tasks/{T}/cancel", raw(b"\xff")),
    ("POST", f"/tasks/{T}/webhook", raw(b"[[[[[[[[[[")),
    ("GET", "/workflows/%00", {}),
    ("GET", "/workflows/%ff", {}),
    ("GET", "/workflows/" + "a" * 5000, {}),
    ("POST", "/endpoints", raw(b'{"endpoint":"\\ud800:80"}')),
    ("POST", "/endpoints", raw(b'{"endpoint":"a\\u0000b:80"}')),
    ("POST", "/endpoints", raw(b'{"endpoint":"[::1:80"}')),
    ("POST", "/endpoints", raw(b'{"endpoint":"a:1","labels":[5]}')),
    ("POST", "/endpoints", raw(b'{"endpoint":"a:99999999999999999999999"}')),
    ("POST", "/endpoints", raw(b'{"endpoint":"http://a:1/x"}')),
    ("POST", "/endpoints", raw(b"[]")),
    ("DELETE", "/endpoints/%00", {}),
    ("DELETE", "/endpoints/%ff", {}),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [pytest.param(m, p, k, id=f"{i:02d}_{m}_{p[:24]}") for i, (m, p, k) in enumerate(GARBAGE)],
)
async def test_garbage_at_any_route_is_a_4xx_in_the_error_shape(
    fleet: Fleet, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    before = await submitted_count(fleet)
    kwargs = {"headers": JSON_HEADERS, **kwargs}
    resp = await fleet.http.request(method, path or fleet.url, **kwargs)
    assert_error_shape(resp, (400, 401, 403, 404, 405, 409, 413, 422))
    assert await submitted_count(fleet) == before
