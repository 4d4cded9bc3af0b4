"""Secrets stay out of messages, logs and events; bounded waits stay bounded.

Each test reproduces a hole against the real thing it crosses (a TCP server that never answers as
the S3 endpoint, a resolver that never answers) and asserts the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from comfy_fleet import errors, storage

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#: What a presigned URL carries that must never leave the process.
SIGNED_PARTS = ("X-Amz-Signature", "X-Amz-Credential", "AKIDEXAMPLE", SECRET_KEY)


@pytest.fixture
async def silent_s3() -> AsyncIterator[str]:
    """An "S3 endpoint" that accepts connections and reads requests but never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def _unaccepting_s3() -> Iterator[str]:
    """An "S3 endpoint" whose accept queue is full: a connection attempt hangs until it times
    out (the kernel drops the SYN), as with a host that stopped answering."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(4):  # more than the queue holds; the rest wait on the SYN
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        yield f"http://{address[0]}:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("hang", ["answer", "accept"])
async def test_an_s3_timeout_names_the_object_without_the_presigned_url(
    hang: str, silent_s3: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A read timeout (the server took the request and never answered) and a connect timeout
    (aiohttp names the whole URL in it) both end in a message without the signed query."""
    with contextlib.ExitStack() as stack:
        endpoint = silent_s3 if hang == "answer" else stack.enter_context(_unaccepting_s3())
        await _put_and_check(endpoint, caplog)


async def _put_and_check(endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    store = await storage.S3BlobStore.create(
        bucket="outputs", endpoint_url=endpoint, access_key="AKIDEXAMPLE", secret_key=SECRET_KEY,
        connect_timeout_s=0.2, read_timeout_s=0.2,
        retry=storage.RetryPolicy(retry_for_s=0.6, base_s=0.05, cap_s=0.1),
    )
    caplog.set_level(logging.DEBUG, logger="comfy_fleet")
    try:
        with pytest.raises(errors.StorageUnavailable) as caught:
            await store.put("tasks/t1/000-out.png", b"png bytes", "image/png")
    finally:
        await store.close()
    exc = caught.value
    # What the endpoint actor records as task.error.message (and so the webhook carries), the
    # details that go with it, and every log line written on the way.
    seen = [exc.message, str(exc), repr(exc.details), repr(exc.args)]
    seen += [record.getMessage() for record in caplog.records]
    assert "put" in exc.message and exc.details["key"] == "tasks/t1/000-out.png"
    for text in seen:
        for part in SIGNED_PARTS:
            assert part not in text, f"{part} leaked into: {text[:300]}"
    # Neither may a traceback of the chain (log.exception would print it).
    cause: BaseException | None = exc.__cause__
    while cause is not None:
        for part in SIGNED_PARTS:
            assert part not in repr(cause)
        cause = cause.__cause__
