"""S3BlobStore against a real SeaweedFS: objects, content types, presigned URLs, outages."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from comfy_fleet import errors

from comfy_fleet import storage
from comfy_fleet_devstack.seaweed import SeaweedS3

pytestmark = pytest.mark.s3

#: Short enough that an outage test gives up quickly, long enough to ride out a restart.
QUICK = storage.RetryPolicy(retry_for_s=1.5, base_s=0.05, cap_s=0.5)


@pytest.fixture
async def store(seaweed: SeaweedS3) -> AsyncIterator[storage.S3BlobStore]:
    s3 = await storage.S3BlobStore.create(**seaweed.client_config(), retry=QUICK)
    try:
        yield s3
    finally:
        await s3.close()


def _key(name: str) -> str:
    return storage.output_key(uuid.uuid4().hex, 0, name)


async def test_put_get_stat_exists_delete(store: storage.S3BlobStore) -> None:
    key = _key("blob.bin")
    data = uuid.uuid4().bytes * 1000
    assert not await store.exists(key)
    await store.put(key, data, "application/octet-stream")
    assert await store.exists(key)
    assert await store.get(key) == data
    info = await store.stat(key)
    assert (info.key, info.size) == (key, len(data))
    await store.delete(key)
    assert not await store.exists(key)
    with pytest.raises(storage.BlobNotFound):
        await store.get(key)
    with pytest.raises(storage.BlobNotFound):
        await store.stat(key)
    await store.delete(key)  # deleting a missing key is not an error


@pytest.mark.parametrize("content_type", ["image/png", "video/mp4", "audio/wav", "text/plain"])
async def test_content_type_is_kept(store: storage.S3BlobStore, content_type: str) -> None:
    key = _key("out")
    await store.put(key, b"payload", content_type)
    assert (await store.stat(key)).content_type == content_type


async def test_presigned_url_serves_the_object_without_credentials(
    store: storage.S3BlobStore,
) -> None:
    key = _key("picture.png")
    data = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    await store.put(key, data, "image/png")
    url = await store.presign_get(key, 60)
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-type"] == "image/png"
        # The same URL without its signature is refused: it is the signature that grants access.
        unsigned = await client.get(url.split("?", 1)[0])
        assert unsigned.status_code == 403


async def test_presigned_url_expires(store: storage.S3BlobStore) -> None:
    key = _key("short.txt")
    await store.put(key, b"soon gone", "text/plain")
    # The signature's date has whole seconds, so a URL lives between expiry-1 and expiry
    # seconds: 1 s was a coin toss on a busy machine.
    url = await store.presign_get(key, 3)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200
        await asyncio.sleep(4.5)
        expired = await client.get(url)
    assert expired.status_code == 403
    assert "expired" in expired.text.lower()


async def test_ping_and_ensure_bucket_create_a_missing_bucket(seaweed: SeaweedS3) -> None:
    config = {**seaweed.client_config(), "bucket": f"fresh-{uuid.uuid4().hex[:8]}"}
    async with storage.S3BlobStore(**config, retry=QUICK) as fresh:
        with pytest.raises(errors.StorageUnavailable):
            await fresh.ping()
        await fresh.ensure_bucket()
        await fresh.ensure_bucket()  # idempotent
        await fresh.ping()
        await fresh.put("k", b"v", "text/plain")
        assert await fresh.get("k") == b"v"


async def test_wrong_credentials_are_refused_at_once(seaweed: SeaweedS3) -> None:
    config = {**seaweed.client_config(), "secret_key": "not-the-secret"}
    async with storage.S3BlobStore(**config, retry=QUICK) as bad:
        with pytest.raises(errors.StorageUnavailable) as info:
            await bad.put(_key("x.txt"), b"x", "text/plain")
    # Refused, not retried: a signature error will not heal by waiting. S3's own error code,
    # read from its XML answer, names the problem.
    assert "attempts" not in info.value.details
    assert "SignatureDoesNotMatch" in info.value.message or "AccessDenied" in info.value.message


async def test_stopped_server_gives_storage_unavailable_then_recovers(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3", bucket="outage-test")
    await server.astart()
    try:
        port = server.port
        async with storage.S3BlobStore(**server.client_config(), retry=QUICK) as s3:
            kept = _key("before.txt")
            await s3.put(kept, b"written before the outage", "text/plain")

            await server.astop()
            with pytest.raises(errors.StorageUnavailable) as info:
                await s3.put(_key("during.txt"), b"x", "text/plain")
            assert info.value.details["attempts"] > 1  # it retried before giving up
            assert isinstance(info.value.__cause__, Exception)
            with pytest.raises(errors.StorageUnavailable):
                await s3.ping()

            await server.astart()
            assert server.port == port  # same address: clients need no new configuration
            await s3.ping()
            assert await s3.get(kept) == b"written before the outage"  # same data
            after = _key("after.txt")
            await s3.put(after, b"after", "text/plain")
            assert await s3.get(after) == b"after"
    finally:
        await server.astop()


async def test_a_put_during_a_short_outage_succeeds_by_retrying(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3", bucket="retry-test")
    await server.astart()
    try:
        patient = storage.RetryPolicy(retry_for_s=60, base_s=0.05, cap_s=0.5)
        async with storage.S3BlobStore(**server.client_config(), retry=patient) as s3:
            await server.astop()
            key = _key("late.txt")
            put = asyncio.create_task(s3.put(key, b"made it", "text/plain"))
            await asyncio.sleep(1.0)
            assert not put.done()  # still retrying while the server is down
            await server.astart()
            await put
            assert await s3.get(key) == b"made it"
    finally:
        await server.astop()


#: Keys S3 spells with escapes; ours are reduced to [A-Za-z0-9._-] but a store holds any key.
ODD_KEYS = ["plain/a.png", "with space/é ü+&=;,.png", "tilde~/x%41y", "deep/a/b/c/__d__.webp"]


@pytest.mark.parametrize("signer", ["botocore's query signer", "the client"])
async def test_odd_keys_round_trip_through_urls_presigned_by_either_signer(
    store: storage.S3BlobStore, signer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if signer == "the client":
        monkeypatch.setattr(store, "_signed_url", lambda *_a: None)
    else:
        assert store._signed_url("PUT", "k", 60, "image/png") is not None
    prefix = uuid.uuid4().hex
    for i, name in enumerate(ODD_KEYS):
        key = f"{prefix}/{name}"
        data = f"{signer} {i}".encode()
        await store.put(key, data, "image/webp")
        assert await store.get(key) == data
        info = await store.stat(key)
        assert (info.key, info.size, info.content_type) == (key, len(data), "image/webp")
        async with httpx.AsyncClient() as http:  # and its presigned GET serves it
            response = await http.get(await store.presign_get(key, 60))
        assert response.status_code == 200 and response.content == data


async def test_put_file_uploads_a_large_file_in_parts(
    store: storage.S3BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfy_fleet.storage import s3 as s3_module

    # S3's smallest part is 5 MiB (the last one excepted): three parts, the last a short one.
    monkeypatch.setattr(s3_module, "MULTIPART_PART_BYTES", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    await store.put_file("models/big", str(path), "application/octet-stream")
    assert await store.get("models/big") == data
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    await store.put_file("models/small", str(small), "application/octet-stream")
    assert (await store.stat("models/small")).size == 4
