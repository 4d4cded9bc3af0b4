"""The presigned path to S3: URLs signed locally (SigV4 in the query string, as botocore signs
them), and PUTs sent to them with plain aiohttp.

Why a second path beside the aiobotocore client: a ``put_object`` call costs about 2.4 ms of CPU
(botocore's event hooks and user-agent building run per request), presign + aiohttp about a
quarter of that, and storing outputs is the endpoint actor's largest cost per task
(docs/performance.md). The URLs are the client's own (tests hold them to it byte for byte),
and an S3 error answer becomes the ``ClientError`` the client would raise.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

#: A presigned PUT URL is used at once; a short life limits what a leaked one could write.
PRESIGNED_PUT_EXPIRY_S = 300


class Signer:
    """Presigned URLs as ``generate_presigned_url`` gives them (``put_object`` with a content
    type, or ``get_object``): AWS Signature Version 4 in the query string ("presigned URLs"),
    computed here with ``hmac`` and ``hashlib`` (about 20 µs a URL against 260 µs through
    botocore's query signer, and 650 µs through the client). tests/unit/test_presign.py holds
    every URL it makes to the client's own, byte for byte.

    Only where the URL is plain to build: an ``endpoint_url``, path addressing and static keys;
    ``Signer.build`` answers None otherwise (use the client).
    """

    def __init__(
        self, *, endpoint_url: str, bucket: str, region: str, access_key: str, secret_key: str
    ) -> None:
        self._base = f"{endpoint_url.rstrip('/')}/{bucket}"
        parts = urlsplit(self._base)
        #: what botocore signs as the host: lower case, without a default port
        self._host = _host_of(parts)
        self._path = parts.path
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        #: the signing key of the day (it changes at midnight UTC)
        self._day_key: tuple[str, bytes] | None = None

    @classmethod
    def build(
        cls,
        *,
        endpoint_url: str | None,
        bucket: str,
        region: str,
        addressing_style: str,
        access_key: str | None,
        secret_key: str | None,
    ) -> Signer | None:
        """A signer when the URL is plain to build; None otherwise."""
        if not endpoint_url or addressing_style != "path" or not access_key or not secret_key:
            return None
        return cls(
            endpoint_url=endpoint_url, bucket=bucket, region=region,
            access_key=access_key, secret_key=secret_key,
        )

    def url(
        self, method: str, key: str, expires_s: int, content_type: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """The presigned URL for ``method`` (GET or PUT) of ``key``, valid ``expires_s`` s from
        ``now`` (the current time)."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        path = f"{self._path}/{quote(key, safe='/~')}"
        signed_headers = "content-type;host" if content_type else "host"
        # In botocore's order, each name and value percent-encoded as it does.
        query = "&".join(f"{name}={quote(value, safe='-_.~')}" for name, value in (
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{self._access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(int(expires_s))),
            ("X-Amz-SignedHeaders", signed_headers),
        ))
        headers = f"host:{self._host}\n"
        if content_type:
            headers = f"content-type:{' '.join(content_type.split())}\n{headers}"
        canonical = "\n".join((
            method.upper(), path, "&".join(sorted(query.split("&"))), headers, signed_headers,
            "UNSIGNED-PAYLOAD",
        ))
        to_sign = "\n".join((
            "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()
        ))
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self._base}/{quote(key, safe='/~')}?{query}&X-Amz-Signature={signature}"

    def _signing_key(self, day: str) -> bytes:
        if self._day_key is None or self._day_key[0] != day:
            key = f"AWS4{self._secret_key}".encode()
            for part in (day, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day_key = (day, key)
        return self._day_key[1]


def _host_of(parts: SplitResult) -> str:
    """The host header botocore signs: lower case, bracketed IPv6, without a default port."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class PutSender:
    """PUTs to presigned URLs through one aiohttp session, made at first use."""

    def __init__(self, *, limit: int, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._limit = limit
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._http: Any = None

    def _session(self) -> Any:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
                ),
                trust_env=False, auto_decompress=False,
            )
        return self._http

    async def put(self, url: str, data: bytes, content_type: str) -> None:
        """PUT ``data``; an S3 error answer raises the ``ClientError`` ``put_object`` would."""
        async with self._session().put(
            url, data=bytes(data), headers={"Content-Type": content_type}
        ) as response:
            if response.status >= 300:
                raise s3_error("PutObject", response.status, await response.read())

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()


def s3_error(operation: str, status: int, body: bytes) -> Exception:
    """The ``botocore`` ``ClientError`` for an S3 error answer (its XML ``<Code>``/``<Message>``),
    as the client itself would raise, so one mapping (``S3BlobStore._call``) serves every path."""
    from botocore.exceptions import ClientError

    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    message = re.search(r"<Message>([^<]{0,300})</Message>", text)
    error = {"Code": code.group(1) if code else str(status), "Message": message.group(1) if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
