"""`AsyncClient`: the asyncio client (httpx). The same calls as `Client`, from `protocol`;
`list` and `stream` are async iterators."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from comfy_fleet_client import errors, models, outputs, protocol, sse

T = TypeVar("T")


class AsyncClient:
    """As `Client`, for asyncio: `await client.get(...)`, `async for e in client.stream(...)`."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, key = protocol.settings_from_env(url, key)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=protocol.base_headers(key), timeout=timeout, transport=transport
        )
        # Presigned URLs carry their own authorisation: never send the API key to storage.
        self._plain = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._plain.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _do(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise errors.from_transport(exc, self.url) from exc
        return protocol.result(call, response)

    # --- tasks ---------------------------------------------------------------------------

    async def submit(
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
        """As `Client.submit`."""
        body = protocol.task_body(
            workflow, params, graph=graph, files=files, client_task_id=client_task_id,
            callback_url=callback_url, priority=priority, tenant=tenant,
            workflow_version=workflow_version,
        )
        call = protocol.submit(body, wait)
        return await self._do(call, timeout=self.timeout + float(call.params.get("wait", 0)))

    async def get(self, task_id: str) -> models.Task:
        return await self._do(protocol.get(task_id))

    async def list_page(self, **filters: Any) -> models.TaskPage:
        return await self._do(protocol.list_page(**filters))

    async def list(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        client_task_id: str | None = None,
        batch_id: str | None = None,
        tenant: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> AsyncIterator[models.Task]:
        """As `Client.list`: `async for task in client.list(...)`."""
        cursor: str | None = None
        count = 0
        while True:
            page = await self.list_page(
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

    async def events(self, task_id: str) -> builtins.list[models.Event]:
        return await self._do(protocol.events(task_id))

    async def stream(
        self,
        task_id: str,
        *,
        previews: bool = False,
        last_event_id: str | int | None = None,
        max_reconnects: int = 5,
        timeout: float | None = None,
    ) -> AsyncIterator[models.StreamEvent]:
        """As `Client.stream`: `async for event in client.stream(task_id)`."""
        start = None if last_event_id is None else str(last_event_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        resume = sse.Resume(start, max_failures=max_reconnects)
        async for event in self._stream(task_id, previews, resume, deadline):
            yield event

    async def _stream(
        self, task_id: str, previews: bool, resume: sse.Resume, deadline: float | None
    ) -> AsyncIterator[models.StreamEvent]:
        path = protocol.stream_path(task_id)
        while True:
            timeout = httpx.Timeout(self.timeout, read=sse.read_timeout(deadline, time.monotonic()))
            try:
                async with self._http.stream(
                    "GET", path, params=protocol.stream_params(previews), headers=resume.headers(), timeout=timeout
                ) as response:
                    if response.status_code >= 400 or not protocol.is_event_stream(response):
                        await response.aread()
                        problem = protocol.stream_response_error(response)
                        assert problem is not None
                        raise problem
                    decoder = sse.Decoder()
                    async for line in response.aiter_lines():
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
                if (await self.get(task_id)).is_final:
                    return
                delay = resume.failed(errors.Unreachable(f"the stream of {task_id} keeps ending early"))
            except httpx.TransportError as exc:
                sse.check_deadline(deadline, task_id)
                delay = resume.failed(errors.from_transport(exc, self.url))
            sse.check_deadline(deadline, task_id, delay)
            await asyncio.sleep(delay)

    async def wait(self, task_id: str, timeout: float | None = None) -> models.Task:
        """As `Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        task = await self.get(task_id)
        if task.is_final:
            return task
        async for _event in self._stream(task_id, False, sse.Resume(), deadline):
            pass
        return await self.get(task_id)

    async def cancel(self, task_id: str) -> models.Task:
        return await self._do(protocol.cancel(task_id))

    async def rerun(
        self,
        task_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        priority: int | None = None,
        same_seed: bool | None = None,
    ) -> models.Task:
        return await self._do(protocol.rerun(task_id, params=params, priority=priority, same_seed=same_seed))

    async def redeliver_webhook(self, task_id: str) -> models.Task:
        return await self._do(protocol.redeliver_webhook(task_id))

    # --- outputs ---------------------------------------------------------------------------

    async def download_outputs(
        self, task: models.Task | str, directory: str | os.PathLike[str]
    ) -> builtins.list[Path]:
        """As `Client.download_outputs`."""
        if isinstance(task, str):
            task = await self.get(task)
        missing = outputs.missing_url(task)
        if missing:
            raise outputs.no_url_error(task, missing)
        paths = []
        for index, (output, path) in enumerate(outputs.plan(task, directory)):
            try:
                paths.append(await self._fetch(output, path))
            except errors.ComfyFleetError as exc:
                if exc.status not in (400, 403, 404):
                    raise
                fresh = (await self.get(task.task_id)).outputs[index]
                paths.append(await self._fetch(fresh, path))
        return paths

    async def _fetch(self, output: models.Output, path: Path) -> Path:
        assert output.url
        sink = outputs.Sink(output, path)
        try:
            async with self._plain.stream("GET", output.url) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise errors.from_response(response)
                async for chunk in response.aiter_bytes():
                    sink.write(chunk)
        except httpx.TransportError as exc:
            sink.abort()
            raise errors.from_transport(exc, output.url.split("?", 1)[0]) from exc
        except BaseException:
            sink.abort()
            raise
        return sink.commit()

    # --- workflows, endpoints, batches -------------------------------------------------------

    async def workflows(self) -> builtins.list[models.Workflow]:
        return await self._do(protocol.workflows())

    async def workflow(self, name: str) -> models.Workflow:
        return await self._do(protocol.workflow(name))

    async def endpoints(self) -> builtins.list[models.Endpoint]:
        return await self._do(protocol.endpoints())

    async def create_batch(self, **kwargs: Any) -> models.Batch:
        """As `Client.create_batch`."""
        return await self._do(protocol.create_batch(**kwargs))

    async def get_batch(self, batch_id: str) -> models.Batch:
        return await self._do(protocol.get_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> models.Batch:
        return await self._do(protocol.cancel_batch(batch_id))
