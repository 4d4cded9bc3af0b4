"""S3BlobStore._signed_url (comfy_fleet/storage/presign.py, the Signer): the URL botocore's client would presign, built
without the client's per-call work. No I/O: creating the client sends nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from comfy_fleet import storage

KEYS = ["tasks/abc/000-out.png", "with space/é ü+&=;,.png", "tilde~/x%41y"]


async def make(**overrides: object) -> storage.S3BlobStore:
    kwargs: dict[str, object] = {
        "bucket": "outputs", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-3",
        "access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }
    kwargs.update(overrides)
    return await storage.S3BlobStore.create(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def store() -> AsyncIterator[storage.S3BlobStore]:
    s = await make()
    try:
        yield s
    finally:
        await s.close()


async def client_url(store: storage.S3BlobStore, method: str, key: str) -> str:
    if method == "GET":
        return str(await store._s3.generate_presigned_url(
            "get_object", Params={"Bucket": store.bucket, "Key": key}, ExpiresIn=600,
        ))
    return str(await store._s3.generate_presigned_url(
        "put_object", Params={"Bucket": store.bucket, "Key": key, "ContentType": "image/png"},
        ExpiresIn=storage.PRESIGNED_PUT_EXPIRY_S,
    ))


async def our_url(store: storage.S3BlobStore, method: str, key: str) -> str | None:
    if method == "GET":
        return store._signed_url("GET", key, 600)
    return store._signed_url("PUT", key, storage.PRESIGNED_PUT_EXPIRY_S, "image/png")


@pytest.mark.parametrize("method", ["PUT", "GET"])
@pytest.mark.parametrize("key", KEYS)
async def test_the_url_is_the_clients_to_the_signature(
    store: storage.S3BlobStore, method: str, key: str
) -> None:
    for _ in range(3):  # both sign with the current second: retry if a second turned between
        ours = await our_url(store, method, key)
        theirs = await client_url(store, method, key)
        assert ours is not None
        if parse_qs(urlsplit(ours).query)["X-Amz-Date"] == parse_qs(urlsplit(theirs).query)["X-Amz-Date"]:
            break
    assert ours == theirs


async def test_a_trailing_slash_on_the_endpoint_changes_nothing() -> None:
    s = await make(endpoint_url="http://127.0.0.1:9000/")
    try:
        url = s._signed_url("PUT", "a/b.png", 60, "image/png")
        assert url is not None and url.startswith("http://127.0.0.1:9000/outputs/a/b.png?")
    finally:
        await s.close()


@pytest.mark.parametrize(
    "overrides",
    [{"endpoint_url": None}, {"addressing_style": "virtual"}, {"access_key": None, "secret_key": None}],
    ids=["no endpoint_url", "virtual-host addressing", "credentials from the provider chain"],
)
async def test_the_client_signs_where_the_url_is_not_plain(overrides: dict[str, object]) -> None:
    s = await make(**overrides)
    try:
        assert s._signed_url("PUT", "a/b.png", 60, "image/png") is None
        assert s._signed_url("GET", "a/b.png", 60) is None
        if "access_key" not in overrides:  # with keys, the client signs it
            assert "X-Amz-Signature=" in await s.presign_get("a/b.png", 60)
    finally:
        await s.close()


@pytest.mark.parametrize("endpoint_url", [
    "https://S3.Example.COM", "https://s3.example.com:443", "http://s3.example.com:80/",
    "http://[::1]:9000", "https://minio.internal:8443",
])
@pytest.mark.parametrize("at", [
    datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 8, 0, 0, 0, tzinfo=UTC),
])
async def test_the_url_is_the_clients_for_any_endpoint_and_day(
    endpoint_url: str, at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signing key changes at midnight UTC (kept per day); hosts are signed as botocore
    signs them (lower case, default ports dropped, IPv6 bracketed)."""
    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: at.replace(tzinfo=None))
    s = await make(endpoint_url=endpoint_url)
    try:
        assert s._signer is not None
        for key in KEYS:
            ours = s._signer.url("PUT", key, storage.PRESIGNED_PUT_EXPIRY_S, "image/png", now=at)
            assert ours == await client_url(s, "PUT", key)
            assert s._signer.url("GET", key, 600, now=at) == await client_url(s, "GET", key)
    finally:
        await s.close()
