"""Pure storage helpers: output keys, file-name refusals, content types, backoff, and the
in-memory store."""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import struct
import wave

import pytest
from PIL import Image

from comfy_fleet import errors, storage
from comfy_fleet.storage import presign, s3

TASK = "0b7e4c1e-4f7a-4c1e-9d3a-1c2b3d4e5f60"


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(struct.pack("<4h", 0, 1, 2, 3))
    return buf.getvalue()


# -- keys ----------------------------------------------------------------------------------------


def test_output_key_has_task_prefix_padded_index_and_name() -> None:
    key = storage.output_key(TASK, 7, "ComfyUI_00001_.png")
    assert key == f"tasks/{TASK}/007-ComfyUI_00001_.png"


def test_output_keys_differ_for_same_name_at_different_indexes() -> None:
    keys = {storage.output_key(TASK, i, "out.png") for i in range(12)}
    assert len(keys) == 12


def test_output_key_replaces_characters_outside_the_safe_set() -> None:
    key = storage.output_key(TASK, 0, "my image (1)#?.png")
    name = key.rsplit("/", 1)[1]
    assert name == "000-my_image__1___.png"
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@pytest.mark.parametrize(
    "filename",
    [
        "",
        ".",
        "..",
        "../etc/passwd",
        "/etc/passwd",
        "a/b.png",
        "a\\b.png",
        "C:\\x.png",
        "bad\x00.png",
        "bad\n.png",
        "bad\x7f.png",
        "x" * 252 + ".png",  # 256 bytes
        "é" * 128,  # 256 bytes of UTF-8 in 128 characters
    ],
)
def test_output_key_refuses_unsafe_file_names(filename: str) -> None:
    with pytest.raises(errors.InputRejected):
        storage.output_key(TASK, 0, filename)


def test_a_255_byte_name_is_accepted() -> None:
    name = "x" * 251 + ".png"
    assert storage.output_key(TASK, 0, name).endswith(name)


def test_dots_inside_a_name_are_fine() -> None:
    assert storage.output_key(TASK, 1, "a..b.png").endswith("/001-a..b.png")


@pytest.mark.parametrize("task_id", ["", "../x", "a/b", "with space"])
def test_output_key_refuses_task_ids_unusable_in_keys(task_id: str) -> None:
    with pytest.raises(ValueError):
        storage.output_key(task_id, 0, "a.png")


def test_output_key_refuses_negative_index() -> None:
    with pytest.raises(ValueError):
        storage.output_key(TASK, -1, "a.png")


def test_refusal_names_the_input_and_survives_pickling() -> None:
    with pytest.raises(errors.InputRejected) as info:
        storage.check_filename("../x")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.message == info.value.message
    assert again.details == {"filename": "../x"}
    assert again.to_json()["error"]["code"] == "input_rejected"


# -- content types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_images_are_sniffed_whatever_their_name(fmt: str, expected: str) -> None:
    data = _image_bytes(fmt)
    assert storage.content_type_for("output.bin", data) == expected
    assert storage.content_type_for("no_extension", data[:64]) == expected


def test_magic_bytes_win_over_a_wrong_extension() -> None:
    assert storage.content_type_for("really_a_png.jpg", _image_bytes("PNG")) == "image/png"


def test_wav_is_sniffed() -> None:
    assert storage.content_type_for("sound", _wav_bytes()) == "audio/wav"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"fLaC\x00\x00\x00\x22", "audio/flac"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"ID3\x04\x00\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\x64", "audio/mpeg"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", "video/quicktime"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        (b"<svg width='1'/>", "image/svg+xml"),
    ],
)
def test_other_formats_are_sniffed(head: bytes, expected: str) -> None:
    assert storage.content_type_for("file", head) == expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("notes.txt", "text/plain"),
        ("data.JSON", "application/json"),
        ("clip.mov", "video/quicktime"),
        ("clip.webm", "video/webm"),
        ("clip.mp4", "video/mp4"),
        ("song.mp3", "audio/mpeg"),
        ("song.flac", "audio/flac"),
        ("song.ogg", "audio/ogg"),
        ("song.wav", "audio/wav"),
        ("pic.jpeg", "image/jpeg"),
        ("drawing.svg", "image/svg+xml"),
    ],
)
def test_extension_decides_when_the_bytes_say_nothing(filename: str, expected: str) -> None:
    assert storage.content_type_for(filename, b"plain words, no magic") == expected


@pytest.mark.parametrize("filename", ["blob", "archive.xyz", "trailing."])
def test_unknown_is_octet_stream(filename: str) -> None:
    assert storage.content_type_for(filename, b"\x00\x01\x02") == storage.OCTET_STREAM


def test_sha256_hex_matches_hashlib() -> None:
    data = _image_bytes("PNG")
    assert storage.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert storage.sha256_hex(memoryview(data)) == storage.sha256_hex(bytearray(data))


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_grows_then_stays_under_the_cap() -> None:
    policy = storage.RetryPolicy(retry_for_s=10, base_s=0.1, cap_s=1.0)
    rng = random.Random(1)
    for attempt in range(40):
        ceiling = min(policy.cap_s, policy.base_s * 2**attempt)
        samples = [storage.backoff_delay(attempt, policy, rng) for _ in range(50)]
        assert all(0.0 <= s <= ceiling for s in samples)
    # Full jitter: late attempts spread over the whole [0, cap] range, not a fixed value.
    late = [storage.backoff_delay(30, policy, rng) for _ in range(200)]
    assert max(late) > 0.5 * policy.cap_s > min(late)


# -- in-memory store -----------------------------------------------------------------------------


async def test_in_memory_store_round_trip_and_outage() -> None:
    store = storage.InMemoryBlobStore()
    key = storage.output_key(TASK, 0, "a.png")
    await store.put(key, b"abc", "image/png")
    assert await store.get(key) == b"abc"
    assert await store.stat(key) == storage.BlobInfo(key=key, size=3, content_type="image/png")
    assert await store.exists(key)
    assert key.split("/")[-1] in await store.presign_get(key, 60)
    store.available = False
    with pytest.raises(errors.StorageUnavailable):
        await store.put(key, b"x", "text/plain")
    with pytest.raises(errors.StorageUnavailable):
        await store.ping()
    store.available = True
    await store.delete(key)
    await store.delete(key)  # deleting a missing key is not an error
    assert not await store.exists(key)
    with pytest.raises(storage.BlobNotFound):
        await store.get(key)


def test_an_s3_error_answer_becomes_the_client_error_botocore_would_raise() -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
            b"<Message>The specified bucket does not exist</Message></Error>")
    exc = presign.s3_error("PutObject", 404, body)
    assert exc.response == {  # type: ignore[attr-defined]
        "Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"},
        "ResponseMetadata": {"HTTPStatusCode": 404},
    }
    assert s3._client_error_info(exc) == ("NoSuchBucket", 404)
    assert not s3._is_retryable(exc)
    # No XML (a proxy's HTML page): the status stands in for the code, and a 503 is retried.
    garbled = presign.s3_error("PutObject", 503, b"<html>busy</html>")
    assert s3._client_error_info(garbled) == ("503", 503)
    assert s3._is_retryable(garbled)


def test_a_url_in_an_error_loses_its_query() -> None:
    exc = TimeoutError(
        "Connection timeout to host http://s3:9000/b/k.png?X-Amz-Credential=AK/x&X-Amz-Signature=ab"
    )
    text, secret = s3._described(exc)
    assert secret and "http://s3:9000/b/k.png" in text and "X-Amz" not in text
    assert s3._described(TimeoutError("no URL here")) == ("TimeoutError('no URL here')", False)
