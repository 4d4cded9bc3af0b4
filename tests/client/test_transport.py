"""Client and AsyncClient over httpx's MockTransport (no sockets): pages followed by cursor, a
stream broken mid-way resumed with Last-Event-ID, wait, and error answers raised as the tree."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from comfy_fleet_client import AsyncClient, Client, errors, models

TID = "11111111-2222-3333-4444-555555555555"
TYPES = ["task.submitted", "task.dispatched", "task.started", "task.progressed", "task.succeeded"]


def _task(i: int, status: str = "queued") -> dict:
    return {"task_id": f"t{i}", "workflow": "solid", "status": status, "outputs": []}


def _frame(seq: int) -> bytes:
    data = {"seq": seq, "type": TYPES[seq - 1], "at": "2026-01-01T00:00:00Z", "data": {"value": 1, "max": 2}}
    return f"id: {seq}\nevent: {TYPES[seq - 1]}\ndata: {json.dumps(data)}\n\n".encode()


class _Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Frames, then (when `cut`) a connection that dies, as a dropped TCP connection does."""

    def __init__(self, chunks: list[bytes], cut: bool) -> None:
        self.chunks, self.cut = chunks, cut

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.cut:
            raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        if self.cut:
            raise httpx.ReadError("connection reset")


class FakeService:
    """Answers like the service: 12 tasks in pages of `limit`, a stream cut after event 2."""

    def __init__(self) -> None:
        self.stream_headers: list[str | None] = []
        self.cursors: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/tasks":
            cursor = request.url.params.get("cursor")
            self.cursors.append(cursor)
            limit = int(request.url.params["limit"])
            start = int(cursor or 0)
            page = [_task(i) for i in range(start, min(start + limit, 12))]
            nxt = str(start + limit) if start + limit < 12 else None
            return httpx.Response(200, json={"tasks": page, "next_cursor": nxt})
        if path == f"/api/v1/tasks/{TID}/stream":
            last = request.headers.get("last-event-id")
            self.stream_headers.append(last)
            after = int(last or 0)
            first = len(self.stream_headers) == 1
            seqs = [1, 2] if first else list(range(after + 1, 6))
            chunks = [b": keep-alive\n\n"] + [_frame(s) for s in seqs]
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Broken(chunks, first))
        if path == f"/api/v1/tasks/{TID}":
            status = "succeeded" if len(self.stream_headers) >= 2 else "running"
            return httpx.Response(200, json={**_task(0, status), "task_id": TID})
        if path == "/api/v1/tasks/missing":
            return httpx.Response(404, json={"error": {"code": "task_not_found", "message": "no task"}})
        return httpx.Response(404, json={"detail": "Not Found"})


def test_list_follows_cursors_and_stops_at_limit() -> None:
    fake = FakeService()
    with Client("http://svc/api/v1", transport=httpx.MockTransport(fake)) as c:
        ids = [t.task_id for t in c.list(page_size=5)]
        assert ids == [f"t{i}" for i in range(12)]
        assert fake.cursors == [None, "5", "10"]
        assert len(list(c.list(page_size=5, limit=7))) == 7


def test_stream_resumes_after_a_dropped_connection_without_loss_or_repeat() -> None:
    fake = FakeService()
    with Client("http://svc/api/v1", transport=httpx.MockTransport(fake)) as c:
        got = [e for e in c.stream(TID) if isinstance(e, models.Event)]
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert fake.stream_headers == [None, "2"]
    assert got[-1].is_final


def test_wait_returns_the_ended_task_and_errors_raise_the_tree() -> None:
    fake = FakeService()
    with Client("http://svc/api/v1", "k", transport=httpx.MockTransport(fake)) as c:
        assert c.wait(TID, timeout=30).status == "succeeded"
        with pytest.raises(errors.NotFound) as info:
            c.get("missing")
        assert info.value.code == "task_not_found" and info.value.status == 404


async def test_async_client_pages_and_resumes_the_same_way() -> None:
    fake = FakeService()
    async with AsyncClient("http://svc/api/v1", transport=httpx.MockTransport(fake)) as c:
        ids = [t.task_id async for t in c.list(page_size=5)]
        assert len(ids) == 12
        got = [e.seq async for e in c.stream(TID) if isinstance(e, models.Event)]
        assert got == [1, 2, 3, 4, 5]
        assert fake.stream_headers == [None, "2"]
        assert (await c.wait(TID, timeout=30)).status == "succeeded"
        with pytest.raises(errors.NotFound):
            await c.get("missing")


def test_submit_sends_a_raw_graph_and_a_tenant_keys_refusal_is_forbidden() -> None:
    sent: list[dict] = []

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/tasks" and request.method == "POST":
            sent.append(json.loads(request.content))
            return httpx.Response(202, json={**_task(1), "workflow": "graph"})
        if request.url.path == "/api/v1/endpoints":
            return httpx.Response(403, json={"error": {"code": "forbidden",
                                                       "message": "this key may not read the fleet"}})
        return httpx.Response(404, json={"detail": "Not Found"})

    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}
    with Client("http://svc/api/v1", "tenant-key", transport=httpx.MockTransport(service)) as c:
        task = c.submit(graph=graph, files={"in.png": b"png"}, tenant="acme")
        assert task.workflow == "graph"
        with pytest.raises(errors.Forbidden) as info:
            c.endpoints()
    assert sent == [{"graph": graph, "files": {"in.png": "cG5n"}, "tenant": "acme"}]
    assert (info.value.code, info.value.status) == ("forbidden", 403)


def test_the_key_goes_to_the_service_and_never_to_storage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("authorization")
        if request.url.host == "svc":
            task = {**_task(0, "succeeded"), "outputs": [
                {"node_id": "2", "filename": "a.png", "size": 3, "url": "http://storage/a?sig=1",
                 "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}
            return httpx.Response(200, json=task)
        return httpx.Response(200, content=b"abc")

    with Client("http://svc/api/v1", "secret-key", transport=httpx.MockTransport(handler)) as c:
        paths = c.download_outputs("t0", tmp_path)
    assert [p.read_bytes() for p in paths] == [b"abc"]
    assert seen == {"svc": "Bearer secret-key", "storage": None}
