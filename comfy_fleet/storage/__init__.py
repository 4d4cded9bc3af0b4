"""Where inputs and outputs live: the blob store port and its implementations.

The package is the public face; each name lives in the module that owns it:

* ``ports``: the ``BlobStore`` port, ``BlobInfo``, ``BlobNotFound``;
* ``keys``: checked file names, output keys, content hashes;
* ``content_types``: what a stored file is;
* ``retry``: the time-bounded backoff every S3 operation follows;
* ``s3``: ``S3BlobStore``; ``presign``: its presigned-URL path (local signing, aiohttp PUTs);
* ``memory``: ``InMemoryBlobStore`` for tests.
"""

from __future__ import annotations

from comfy_fleet.storage.content_types import OCTET_STREAM, content_type_for
from comfy_fleet.storage.keys import MAX_FILENAME_BYTES, check_filename, output_key, sha256_hex
from comfy_fleet.storage.memory import InMemoryBlobStore
from comfy_fleet.storage.ports import BlobInfo, BlobNotFound, BlobStore
from comfy_fleet.storage.presign import PRESIGNED_PUT_EXPIRY_S
from comfy_fleet.storage.retry import RetryPolicy, backoff_delay
from comfy_fleet.storage.s3 import S3BlobStore

__all__ = [
    "MAX_FILENAME_BYTES",
    "OCTET_STREAM",
    "PRESIGNED_PUT_EXPIRY_S",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "InMemoryBlobStore",
    "RetryPolicy",
    "S3BlobStore",
    "backoff_delay",
    "check_filename",
    "content_type_for",
    "output_key",
    "sha256_hex",
]
