"""Where task outputs live: the BlobStore port, its S3 and in-memory implementations, and the
pure helpers that name and type what is stored.

Keys: ``output_key(task_id, index, filename)`` → ``tasks/<task_id>/<index:03d>-<safe name>``.
The index (the output's place in node order) keeps keys unique even when two outputs share a
file name, and the name is checked, then reduced to ``[A-Za-z0-9._-]``.

``S3BlobStore`` keeps one aiobotocore client open. Connection errors and 5xx answers are retried
with exponential backoff and full jitter until ``retry_for_s`` has passed, then the operation
raises ``errors.StorageUnavailable``; any other refusal raises it at once. A missing object raises
``BlobNotFound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from comfy_fleet import errors

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Content type of bytes we cannot identify.
OCTET_STREAM = "application/octet-stream"
#: Longest file name accepted in a key, in UTF-8 bytes (the common filesystem limit).
MAX_FILENAME_BYTES = 255


class BlobNotFound(errors.NotFound):
    """No object has this key."""

    code = "blob_not_found"


@dataclass(frozen=True)
class BlobInfo:
    """What the store knows about one object."""

    key: str
    size: int
    content_type: str


class BlobStore(Protocol):
    """An object store for task outputs. Every failure to reach it is errors.StorageUnavailable."""

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; BlobNotFound when there is none."""
        ...

    async def stat(self, key: str) -> BlobInfo:
        """Size and content type; BlobNotFound when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def presign_get(self, key: str, expires_s: int) -> str:
        """A URL that GETs the object without credentials for ``expires_s`` seconds."""
        ...

    async def ping(self) -> None:
        """Raise errors.StorageUnavailable unless the bucket answers now (one try, no retries)."""
        ...

    async def close(self) -> None: ...


# -- pure helpers --------------------------------------------------------------------------------


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_filename(filename: str) -> str:
    """Return ``filename`` if it is a plain file name; raise errors.InputRejected otherwise.

    Refused: empty, ``.``/``..``, any path separator (so no absolute or nested path), control
    characters, more than MAX_FILENAME_BYTES bytes of UTF-8.
    """
    if not filename:
        raise errors.InputRejected("the file name is empty")
    if filename in (".", ".."):
        raise errors.InputRejected(
            f"the file name {filename!r} is not a file", {"filename": filename}
        )
    if "/" in filename or "\\" in filename:
        raise errors.InputRejected(
            f"the file name {filename!r} contains a path separator", {"filename": filename}
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in filename):
        raise errors.InputRejected(
            f"the file name {filename!r} contains a control character", {"filename": filename}
        )
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise errors.InputRejected(
            f"the file name is longer than {MAX_FILENAME_BYTES} bytes", {"filename": filename[:64]}
        )
    return filename


def output_key(task_id: str, index: int, filename: str) -> str:
    """``tasks/<task_id>/<index:03d>-<safe name>`` for output number ``index`` of a task."""
    if not _TASK_ID.match(task_id):
        raise ValueError(f"task id {task_id!r} is not usable in a key")
    if index < 0:
        raise ValueError(f"output index {index} is negative")
    safe = _UNSAFE_KEY_CHARS.sub("_", check_filename(filename))
    return f"tasks/{task_id}/{index:03d}-{safe}"


_BY_EXTENSION: dict[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "svg": "image/svg+xml",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "m4a": "audio/mp4",
    "txt": "text/plain",
    "json": "application/json",
}


#: MPEG audio frame headers without an ID3 tag (MPEG-1/2 layer III, with or without CRC).
_MP3_FRAME_SYNC = frozenset({b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa"})


def _sniff(head: bytes) -> str | None:
    """The content type that ``head`` (the first bytes of a file) proves, if any."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or head[:2] in _MP3_FRAME_SYNC:
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML: both WebM and Matroska; the doctype says which.
        return "video/x-matroska" if b"matroska" in head[:64] else "video/webm"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text[:1024]):
        return "image/svg+xml"
    return None


def content_type_for(filename: str, head: bytes) -> str:
    """The content type of a file: its magic bytes first, then its extension, else octet-stream.

    ``head`` needs only the first few hundred bytes (the whole file is fine too).
    """
    sniffed = _sniff(head)
    if sniffed is not None:
        return sniffed
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _BY_EXTENSION.get(ext, OCTET_STREAM)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by total time."""

    #: Give up (StorageUnavailable) once the next wait would end after this many seconds.
    retry_for_s: float = 15.0
    #: First backoff ceiling; doubles per attempt.
    base_s: float = 0.1
    #: Largest single wait.
    cap_s: float = 2.0


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1``: uniform in [0, min(cap, base·2^n)]."""
    ceiling = min(policy.cap_s, policy.base_s * (2 ** min(attempt, 32)))
    return rng.uniform(0.0, ceiling)


# -- in memory -----------------------------------------------------------------------------------


class InMemoryBlobStore:
    """A BlobStore in a dict, for unit tests. Set ``available = False`` to simulate an outage."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise errors.StorageUnavailable("the in-memory store is switched off")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self._check()
        self.objects[key] = (bytes(data), content_type)

    async def get(self, key: str) -> bytes:
        self._check()
        try:
            return self.objects[key][0]
        except KeyError:
            raise BlobNotFound(f"no object {key!r}", {"key": key}) from None

    async def stat(self, key: str) -> BlobInfo:
        self._check()
        try:
            data, content_type = self.objects[key]
        except KeyError:
            raise BlobNotFound(f"no object {key!r}", {"key": key}) from None
        return BlobInfo(key=key, size=len(data), content_type=content_type)

    async def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)

    async def exists(self, key: str) -> bool:
        self._check()
        return key in self.objects

    async def presign_get(self, key: str, expires_s: int) -> str:
        expires_at = int(time.time()) + expires_s
        return f"memory://{self.bucket}/{quote(key)}?expires={expires_at}"

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        return None


# -- S3 ------------------------------------------------------------------------------------------

#: S3 error codes worth retrying besides 5xx answers.
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def _client_error_info(exc: BaseException) -> tuple[str, int] | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


#: A presigned PUT URL is used at once; a short life limits what a leaked one could write.
PRESIGNED_PUT_EXPIRY_S = 300


def _s3_error(operation: str, status: int, body: bytes) -> Exception:
    """The ``botocore`` ``ClientError`` for an S3 error answer (its XML ``<Code>``/``<Message>``),
    as the client itself would raise, so one mapping (``_call``) serves every path."""
    from botocore.exceptions import ClientError

    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    message = re.search(r"<Message>([^<]{0,300})</Message>", text)
    error = {"Code": code.group(1) if code else str(status), "Message": message.group(1) if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _is_retryable(exc: BaseException) -> bool:
    import aiohttp
    import botocore.exceptions as bx

    info = _client_error_info(exc)
    if info is not None:
        code, status = info
        return status >= 500 or code in _RETRYABLE_CODES
    transient = (bx.ConnectionError, bx.HTTPClientError, aiohttp.ClientError, TimeoutError, OSError)
    return isinstance(exc, transient)


class S3BlobStore:
    """A BlobStore on an S3-compatible server through one long-lived aiobotocore client.

    Build with ``await S3BlobStore.create(...)`` (or the constructor, then ``await open()``);
    ``await close()`` when done. Path-style addressing by default, which S3-compatible servers
    (SeaweedFS, MinIO) need; AWS accepts it too.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        addressing_style: str = "path",
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 30.0,
        max_pool_connections: int = 32,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region or "us-east-1"
        self._access_key = access_key
        self._secret_key = secret_key
        self._addressing_style = addressing_style
        self.retry = retry or RetryPolicy()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_pool_connections = max_pool_connections
        self._rng = random.Random()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        #: aiohttp session for presigned PUTs (``put``), made at first use
        self._http: Any = None
        self._signer_credentials: Any = None

    @classmethod
    async def from_settings(cls, settings: Any) -> S3BlobStore:
        """The store of a `comfy_fleet.config.Settings` (S3_* and AWS_* variables), opened."""
        return await cls.create(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.aws_access_key_id,
            secret_key=settings.aws_secret_access_key,
        )

    @classmethod
    async def create(cls, **kwargs: Any) -> S3BlobStore:
        """Construct with ``kwargs`` and open the client."""
        store = cls(**kwargs)
        await store.open()
        return store

    async def open(self) -> None:
        """Create the S3 client (no request is sent)."""
        if self._client is not None:
            return
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            s3={"addressing_style": self._addressing_style},
            signature_version="s3v4",
            # Our retry loop owns retries, so that its time bound is the whole story.
            retries={"total_max_attempts": 1},
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            max_pool_connections=self._max_pool_connections,
            # Newer botocore adds CRC checksums to every upload by default, which several
            # S3-compatible servers do not implement; send them only where S3 requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=config,
            )
        )
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> S3BlobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def _s3(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3BlobStore is not open: await open() or use create()")
        return self._client

    async def _call(self, op: str, key: str | None, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with the retry policy; translate S3 errors into ours, once, here."""
        began = time.monotonic()
        attempt = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                info = _client_error_info(exc)
                details = {"op": op, "key": key, "bucket": self.bucket, "error": repr(exc)[:300]}
                if info is not None and op != "head_bucket" and (
                    info[0] in _NOT_FOUND_CODES or (info[1] == 404 and info[0] != "NoSuchBucket")
                ):
                    message = f"no object {key!r} in bucket {self.bucket!r}"
                    raise BlobNotFound(message, details) from exc
                if not _is_retryable(exc):
                    raise errors.StorageUnavailable(
                        f"S3 refused {op} of {key or self.bucket!r}: {info[0] if info else exc!r}",
                        details,
                    ) from exc
                delay = backoff_delay(attempt, self.retry, self._rng)
                elapsed = time.monotonic() - began
                if elapsed + delay > self.retry.retry_for_s:
                    raise errors.StorageUnavailable(
                        f"S3 {op} failed {attempt + 1} times over {elapsed:.1f}s: {exc!r}"[:500],
                        {**details, "attempts": attempt + 1},
                    ) from exc
                # One warning per operation; the rest of the retries only at debug level.
                _log.log(
                    logging.WARNING if attempt == 0 else logging.DEBUG,
                    "S3 %s of %r failed (%r); retry %d in %.2fs",
                    op, key, exc, attempt + 1, delay,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """PUT through a URL presigned by the aiobotocore client, sent with plain aiohttp.

        The S3 protocol (SigV4, the URL, the error codes) stays botocore's; only the sending
        differs. A ``put_object`` call costs about 2.4 ms of CPU here (botocore's event hooks and
        user-agent building run per request), presign + aiohttp about a quarter of that, and
        storing outputs is the endpoint actor's largest cost per task (docs/performance.md).
        An S3 error answer becomes the same ``ClientError`` ``put_object`` would raise.
        """

        async def op() -> None:
            url = self._signed_url("PUT", key, PRESIGNED_PUT_EXPIRY_S, content_type) or await self._s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
                ExpiresIn=PRESIGNED_PUT_EXPIRY_S,
            )
            async with self._put_session().put(
                url, data=bytes(data), headers={"Content-Type": content_type}
            ) as response:
                if response.status >= 300:
                    raise _s3_error("PutObject", response.status, await response.read())

        await self._call("put", key, op)

    def _signed_url(
        self, method: str, key: str, expires_s: int, content_type: str | None = None
    ) -> str | None:
        """The presigned URL ``generate_presigned_url`` would give (``put_object`` with a
        content type, or ``get_object``), signed by botocore's own SigV4 query signer without
        the client's per-call endpoint rules and parameter checks (0.65 ms of CPU a call here
        against 0.26). Only where the URL is plain to build: an ``endpoint_url``, path
        addressing and static keys; otherwise None (use the client)."""
        if (
            not self.endpoint_url or self._addressing_style != "path"
            or not self._access_key or not self._secret_key
        ):
            return None
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        if self._signer_credentials is None:
            self._signer_credentials = Credentials(self._access_key, self._secret_key)
        request = AWSRequest(
            method=method,
            url=f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{quote(key, safe='/~')}",
            headers={"Content-Type": content_type} if content_type else {},
        )
        S3SigV4QueryAuth(self._signer_credentials, "s3", self.region, expires=expires_s).add_auth(request)
        return str(request.url)

    def _put_session(self) -> Any:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_pool_connections),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
                ),
                trust_env=False, auto_decompress=False,
            )
        return self._http

    async def get(self, key: str) -> bytes:
        async def op() -> bytes:
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return bytes(await body.read())

        return await self._call("get", key, op)

    async def stat(self, key: str) -> BlobInfo:
        async def op() -> BlobInfo:
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
            return BlobInfo(
                key=key,
                size=int(response["ContentLength"]),
                content_type=str(response.get("ContentType") or OCTET_STREAM),
            )

        return await self._call("stat", key, op)

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        async def op() -> None:
            await self._s3.delete_object(Bucket=self.bucket, Key=key)

        await self._call("delete", key, op)

    async def presign_get(self, key: str, expires_s: int) -> str:
        # Signing is local: no request is sent, so there is nothing to retry.
        return self._signed_url("GET", key, int(expires_s)) or str(
            await self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_s)
            )
        )

    async def ping(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise errors.StorageUnavailable(
                f"S3 bucket {self.bucket!r} does not answer: {exc!r}"[:500],
                {"bucket": self.bucket, "endpoint_url": self.endpoint_url},
            ) from exc

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (retried like every other operation)."""

        async def op() -> None:
            try:
                await self._s3.head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:
                info = _client_error_info(exc)
                if info is None or info[1] != 404:
                    raise
            params: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                await self._s3.create_bucket(**params)
            except Exception as exc:
                info = _client_error_info(exc)
                if info is None or info[0] not in _BUCKET_EXISTS_CODES:
                    raise

        await self._call("head_bucket", None, op)
