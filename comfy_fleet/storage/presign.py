"""The presigned path to S3: URLs signed locally with botocore's SigV4 query signer, and PUTs
sent to them with plain aiohttp.

Why a second path beside the aiobotocore client: a ``put_object`` call costs about 2.4 ms of CPU
(botocore's event hooks and user-agent building run per request), presign + aiohttp about a
quarter of that, and storing outputs is the endpoint actor's largest cost per task
(docs/performance.md). The S3 protocol (SigV4, the URL, the error codes) stays botocore's; only
the sending differs, and an S3 error answer becomes the ``ClientError`` the client would raise.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

#: A presigned PUT URL is used at once; a short life limits what a leaked one could write.
PRESIGNED_PUT_EXPIRY_S = 300


class Signer:
    """Presigned URLs as ``generate_presigned_url`` gives them (``put_object`` with a content
    type, or ``get_object``), signed by botocore's own SigV4 query signer without the client's
    per-call endpoint rules and parameter checks (0.65 ms of CPU a call here against 0.26).

    Only where the URL is plain to build: an ``endpoint_url``, path addressing and static keys;
    ``Signer.build`` answers None otherwise (use the client).
    """

    def __init__(
        self, *, endpoint_url: str, bucket: str, region: str, access_key: str, secret_key: str
    ) -> None:
        self._base = f"{endpoint_url.rstrip('/')}/{bucket}"
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._credentials: Any = None

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

    def url(self, method: str, key: str, expires_s: int, content_type: str | None = None) -> str:
        """The presigned URL for ``method`` (GET or PUT) of ``key``, valid ``expires_s`` s."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        if self._credentials is None:
            self._credentials = Credentials(self._access_key, self._secret_key)
        request = AWSRequest(
            method=method,
            url=f"{self._base}/{quote(key, safe='/~')}",
            headers={"Content-Type": content_type} if content_type else {},
        )
        S3SigV4QueryAuth(self._credentials, "s3", self._region, expires=expires_s).add_auth(request)
        return str(request.url)


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
