"""A BlobStore in a dict, for unit tests and local runs without S3."""

from __future__ import annotations

import time
from urllib.parse import quote

from comfy_fleet import errors
from comfy_fleet.storage import ports


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

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        with open(path, "rb") as f:
            await self.put(key, f.read(), content_type)

    async def get(self, key: str) -> bytes:
        self._check()
        try:
            return self.objects[key][0]
        except KeyError:
            raise ports.BlobNotFound(f"no object {key!r}", {"key": key}) from None

    async def stat(self, key: str) -> ports.BlobInfo:
        self._check()
        try:
            data, content_type = self.objects[key]
        except KeyError:
            raise ports.BlobNotFound(f"no object {key!r}", {"key": key}) from None
        return ports.BlobInfo(key=key, size=len(data), content_type=content_type)

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

