"""Task outputs on an S3-compatible server: ``S3BlobStore``, the production BlobStore.

``S3BlobStore`` keeps one aiobotocore client open (get, stat, delete, the bucket) and sends PUTs
to presigned URLs (``presign``). Connection errors and 5xx answers are retried with exponential
backoff and full jitter (``retry``) until ``retry_for_s`` has passed, then the operation raises
``errors.StorageUnavailable``; any other refusal raises it at once. A missing object raises
``ports.BlobNotFound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from comfy_fleet import errors
from comfy_fleet.storage import content_types, ports, presign
from comfy_fleet.storage import retry as retry_module

_log = logging.getLogger(__name__)
T = TypeVar("T")

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


#: A URL's query: on a presigned URL, the credential and the signature.
_URL_QUERY = re.compile(r"""(https?://[^\s'"?#]*)\?[^\s'"#]*""")


def _described(exc: BaseException) -> tuple[str, bool]:
    """``repr(exc)`` with the query of any URL in it removed, and whether there was one.

    aiohttp names the whole presigned URL in some errors (a connect timeout); its query holds
    the access key id and a signature that lets anyone write the object until it expires, and
    this text goes into ``task.error``, the logs and the webhook.
    """
    text = repr(exc)
    redacted = _URL_QUERY.sub(r"\1", text)
    return redacted, redacted != text


def _is_retryable(exc: BaseException) -> bool:
    import aiohttp
    import botocore.exceptions as bx

    info = _client_error_info(exc)
    if info is not None:
        code, status = info
        return status >= 500 or code in _RETRYABLE_CODES
    transient = (bx.ConnectionError, bx.HTTPClientError, aiohttp.ClientError, TimeoutError, OSError)
    return isinstance(exc, transient)


#: Part size of multipart uploads (``put_file``); S3 allows 10,000 parts, so up to ~640 GiB.
MULTIPART_PART_BYTES = 64 * 1024 * 1024


def _read_part(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


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
        retry: retry_module.RetryPolicy | None = None,
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
        self.retry = retry or retry_module.RetryPolicy()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_pool_connections = max_pool_connections
        self._rng = random.Random()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._signer = presign.Signer.build(
            endpoint_url=endpoint_url, bucket=bucket, region=self.region,
            addressing_style=addressing_style, access_key=access_key, secret_key=secret_key,
        )
        self._sender = presign.PutSender(
            limit=max_pool_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )

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
        await self._sender.close()
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
                described, secret = _described(exc)
                # A cause naming a presigned URL would print it in any traceback of ours.
                cause = None if secret else exc
                details = {"op": op, "key": key, "bucket": self.bucket, "error": described[:300]}
                if info is not None and op != "head_bucket" and (
                    info[0] in _NOT_FOUND_CODES or (info[1] == 404 and info[0] != "NoSuchBucket")
                ):
                    message = f"no object {key!r} in bucket {self.bucket!r}"
                    raise ports.BlobNotFound(message, details) from cause
                if not _is_retryable(exc):
                    raise errors.StorageUnavailable(
                        f"S3 refused {op} of {key or self.bucket!r}: {info[0] if info else described}",
                        details,
                    ) from cause
                delay = retry_module.backoff_delay(attempt, self.retry, self._rng)
                elapsed = time.monotonic() - began
                if elapsed + delay > self.retry.retry_for_s:
                    raise errors.StorageUnavailable(
                        f"S3 {op} failed {attempt + 1} times over {elapsed:.1f}s: {described}"[:500],
                        {**details, "attempts": attempt + 1},
                    ) from cause
                # One warning per operation; the rest of the retries only at debug level.
                _log.log(
                    logging.WARNING if attempt == 0 else logging.DEBUG,
                    "S3 %s of %r failed (%s); retry %d in %.2fs",
                    op, key, described, attempt + 1, delay,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """PUT through a presigned URL with plain aiohttp (``presign``: why, and what stays
        botocore's); the URL comes from the local signer when it can, else from the client."""

        async def op() -> None:
            url = self._signed_url(
                "PUT", key, presign.PRESIGNED_PUT_EXPIRY_S, content_type
            ) or await self._s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
                ExpiresIn=presign.PRESIGNED_PUT_EXPIRY_S,
            )
            await self._sender.put(url, data, content_type)

        await self._call("put", key, op)

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        """PUT a file too large to hold in memory: one PUT up to MULTIPART_PART_BYTES, else a
        multipart upload of parts of that size (each retried; aborted when one fails for good,
        so no object and no dangling parts are left)."""
        size = os.path.getsize(path)
        if size <= MULTIPART_PART_BYTES:
            await self.put(key, await asyncio.to_thread(_read_part, path, 0, size), content_type)
            return
        upload = await self._call("create_multipart_upload", key, lambda: self._s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type
        ))
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, MULTIPART_PART_BYTES), start=1):
                data = await asyncio.to_thread(_read_part, path, offset, MULTIPART_PART_BYTES)
                answer = await self._call("upload_part", key, lambda n=number, d=data: self._s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=d
                ))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self._call("complete_multipart_upload", key, lambda: self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _signed_url(
        self, method: str, key: str, expires_s: int, content_type: str | None = None
    ) -> str | None:
        """The locally signed URL (``presign.Signer``), or None where only the client can."""
        if self._signer is None:
            return None
        return self._signer.url(method, key, expires_s, content_type)

    async def get(self, key: str) -> bytes:
        async def op() -> bytes:
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return bytes(await body.read())

        return await self._call("get", key, op)

    async def stat(self, key: str) -> ports.BlobInfo:
        async def op() -> ports.BlobInfo:
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
            return ports.BlobInfo(
                key=key,
                size=int(response["ContentLength"]),
                content_type=str(response.get("ContentType") or content_types.OCTET_STREAM),
            )

        return await self._call("stat", key, op)

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except ports.BlobNotFound:
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
            described, secret = _described(exc)
            raise errors.StorageUnavailable(
                f"S3 bucket {self.bucket!r} does not answer: {described}"[:500],
                {"bucket": self.bucket, "endpoint_url": self.endpoint_url},
            ) from (None if secret else exc)

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
