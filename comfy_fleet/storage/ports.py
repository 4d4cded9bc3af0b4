"""The BlobStore port: what the service needs from an object store, and what it may raise.

Implementations: ``s3.S3BlobStore`` (production) and ``memory.InMemoryBlobStore`` (unit tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from comfy_fleet import errors


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

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        """``put`` of a file's bytes, which may be too large to hold in memory (models)."""
        ...

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
