"""`Client`: the synchronous client (httpx). Requests and answers come from `protocol`, so it
speaks exactly what `AsyncClient` speaks; only the waiting differs."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from comfy_fleet_client import errors, models, outputs, protocol, sse

T = TypeVar("T")


class Client:
    """A comfy-fleet service at `url` (default: COMFY_FLEET_URL, else
    http://127.0.0.1:8000/api/v1), with the bearer `key` (default: COMFY_FLEET_KEY).

    Every method raises a `ComfyFleetError` subclass on failure (see `errors`). Use it as a
    context manager, or call `close()`.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, key = protocol.settings_from_env(url, key)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=protocol.base_headers(key), timeout=timeout, transport=transport
        )
        # Presigned URLs carry their own authorisation: never send the API key to storage.
        self._plain = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _do(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.json,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise errors.from_transport(exc, self.url) from exc
        return protocol.result(call, response)

    # --- tasks ---------------------------------------------------------------------------

    def submit(
        self,
        workflow: str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        graph: Mapping[str, Any] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        client_task_id: str | None = None,
        callback_url: str | None = None,
        priority: int | None = None,
        tenant: str | None = None,
        workflow_version: str | None = None,
        wait: float | None = None,
    ) -> models.Task:
        """Submit a task: a served `workflow` with its `params`, or a raw API-format `graph`
        with the `files` its LoadImage nodes name (see `protocol.task_body`). With `wait`
        (seconds), the answer is held until it ends or the time is up (the service holds at
        most 300 s; use `wait()` for longer)."""
        body = protocol.task_body(
            workflow, params, graph=graph, files=files, client_task_id=client_task_id,
            callback_url=callback_url, priority=priority, tenant=tenant,
            workflow_version=workflow_version,
        )
        call = protocol.submit(body, wait)
        return self._do(call, timeout=self.timeout + float(call.params.get("wait", 0)))

    def get(self, task_id: str) -> models.Task:
        return self._do(protocol.get(task_id))

    def list_page(self, **filters: Any) -> models.TaskPage:
        """One page of tasks, newest first (filters: status, workflow, client_task_id,
        batch_id, tenant, limit, cursor)."""
        return self._do(protocol.list_page(**filters))

    def list(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        client_task_id: str | None = None,
        batch_id: str | None = None,
        tenant: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> Iterator[models.Task]:
        """Every matching task, newest first, fetching pages as they are consumed (at most
        `limit` tasks when given)."""
        cursor: str | None = None
        count = 0
        while True:
            page = self.list_page(
                status=status, workflow=workflow, client_task_id=client_task_id,
                batch_id=batch_id, tenant=tenant, limit=page_size, cursor=cursor,
            )
            for task in page.tasks:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield task
            if not page.next_cursor or not page.tasks:
                return
            cursor = page.next_cursor

    def events(self, task_id: str) -> builtins.list[models.Event]:
        return self._do(protocol.events(task_id))

    def stream(
        self,
        task_id: str,
        *,
        previews: bool = False,
        last_event_id: str | int | None = None,
        max_reconnects: int = 5,
        timeout: float | None = None,
    ) -> Iterator[models.StreamEvent]:
        """The task's events live (`Event`, plus `QueueUpdate` and, with `previews`,
        `Preview`), ending after the event that ends the task. A dropped connection is
        reopened with `Last-Event-ID`, so no recorded event is lost or repeated. With
        `timeout` (seconds), raises `WaitTimeout` once that time has passed."""
        start = None if last_event_id is None else str(last_event_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        yield from self._stream(task_id, previews, sse.Resume(start, max_failures=max_reconnects), deadline)

    def _stream(
        self, task_id: str, previews: bool, resume: sse.Resume, deadline: float | None
    ) -> Iterator[models.StreamEvent]:
        path = protocol.stream_path(task_id)
        while True:
            timeout = httpx.Timeout(self.timeout, read=sse.read_timeout(deadline, time.monotonic()))
            try:
                with self._http.stream(
                    "GET", path, params=protocol.stream_params(previews), headers=resume.headers(), timeout=timeout
                ) as response:
                    if response.status_code >= 400 or not protocol.is_event_stream(response):
                        response.read()
                        problem = protocol.stream_response_error(response)
                        assert problem is not None
                        raise problem
                    decoder = sse.Decoder()
                    for line in response.iter_lines():
                        sse.check_deadline(deadline, task_id)
                        msg = decoder.feed(line)
                        if msg is None:
                            continue
                        event = sse.to_event(msg)
                        resume.seen(msg, event)
                        yield event
                        if resume.ended:
                            return
                # A clean end before the task's end: the connection was cut between frames,
                # or the task ended before the event we resumed after.
                if self.get(task_id).is_final:
                    return
                delay = resume.failed(errors.Unreachable(f"the stream of {task_id} keeps ending early"))
            except httpx.TransportError as exc:
                sse.check_deadline(deadline, task_id)
                delay = resume.failed(errors.from_transport(exc, self.url))
            sse.check_deadline(deadline, task_id, delay)
            time.sleep(delay)

    def wait(self, task_id: str, timeout: float | None = None) -> models.Task:
        """The task once it has ended (following its stream); `WaitTimeout` after `timeout`
        seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        task = self.get(task_id)
        if task.is_final:
            return task
        for _event in self._stream(task_id, False, sse.Resume(), deadline):
            pass
        return self.get(task_id)

    def cancel(self, task_id: str) -> models.Task:
        return self._do(protocol.cancel(task_id))

    def rerun(
        self,
        task_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        priority: int | None = None,
        same_seed: bool | None = None,
    ) -> models.Task:
        return self._do(protocol.rerun(task_id, params=params, priority=priority, same_seed=same_seed))

    def redeliver_webhook(self, task_id: str) -> models.Task:
        return self._do(protocol.redeliver_webhook(task_id))

    # --- outputs ---------------------------------------------------------------------------

    def download_outputs(self, task: models.Task | str, directory: str | os.PathLike[str]) -> builtins.list[Path]:
        """Download every output of `task` into `directory` (created if needed), each checked
        against its recorded sha256 and size; returns the paths. An expired URL is renewed
        once by reading the task again."""
        if isinstance(task, str):
            task = self.get(task)
        missing = outputs.missing_url(task)
        if missing:
            raise outputs.no_url_error(task, missing)
        paths = []
        for index, (output, path) in enumerate(outputs.plan(task, directory)):
            try:
                paths.append(self._fetch(output, path))
            except errors.ComfyFleetError as exc:
                if exc.status not in (400, 403, 404):
                    raise
                fresh = self.get(task.task_id).outputs[index]
                paths.append(self._fetch(fresh, path))
        return paths

    def _fetch(self, output: models.Output, path: Path) -> Path:
        assert output.url
        sink = outputs.Sink(output, path)
        try:
            with self._plain.stream("GET", output.url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise errors.from_response(response)
                for chunk in response.iter_bytes():
                    sink.write(chunk)
        except httpx.TransportError as exc:
            sink.abort()
            raise errors.from_transport(exc, output.url.split("?", 1)[0]) from exc
        except BaseException:
            sink.abort()
            raise
        return sink.commit()

    # --- workflows, endpoints, batches -------------------------------------------------------

    def workflows(self) -> builtins.list[models.Workflow]:
        return self._do(protocol.workflows())

    def workflow(self, name: str) -> models.Workflow:
        return self._do(protocol.workflow(name))

    def endpoints(self) -> builtins.list[models.Endpoint]:
        return self._do(protocol.endpoints())

    def create_batch(self, **kwargs: Any) -> models.Batch:
        """`POST /batches`: `tasks=[protocol.task_body(...), ...]`, or `workflow=`, `params=`,
        `sweep={param: [values]}` (and `workflow_version=` to pin the sweep's version);
        optional `client_batch_id`, `callback_url`, `priority`, `tenant`."""
        return self._do(protocol.create_batch(**kwargs))

    def get_batch(self, batch_id: str) -> models.Batch:
        return self._do(protocol.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> models.Batch:
        return self._do(protocol.cancel_batch(batch_id))
