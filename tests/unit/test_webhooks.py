"""Signing, verification, secrets, ids, the retry policy and outcome classification."""

from __future__ import annotations

import base64
import pickle
import random
from datetime import UTC, datetime

import pytest

from comfy_fleet import errors

from comfy_fleet.delivery import webhooks

# The example of the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_specification_example() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    assert webhooks.sign(key, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_verifies_with_the_official_library() -> None:
    swh = pytest.importorskip("standardwebhooks")
    key = webhooks.parse_secret(SPEC_SECRET)
    body = b'{"type": "task.succeeded", "task": {"task_id": "t-1"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = webhooks.build_headers(webhooks.webhook_id("t-1", 7), now, body, key)
    assert swh.Webhook(SPEC_SECRET).verify(body, headers) == {
        "type": "task.succeeded",
        "task": {"task_id": "t-1"},
    }
    # And the other way round: what the library signs, we verify.
    theirs = swh.Webhook(SPEC_SECRET).sign("msg_x", datetime.fromtimestamp(now, UTC), body.decode())
    their_headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(now),
        "webhook-signature": theirs,
    }
    assert webhooks.verify(key, their_headers, body, now=now)


def _headers(key: bytes, ts: int = SPEC_TS, body: bytes = SPEC_BODY) -> dict[str, str]:
    return webhooks.build_headers(SPEC_ID, ts, body, key)


def test_verify_accepts_own_headers_and_rejects_tampering() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    headers = _headers(key)
    assert webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS)
    assert not webhooks.verify(key, headers, SPEC_BODY + b" ", now=SPEC_TS)
    assert not webhooks.verify(b"another key", headers, SPEC_BODY, now=SPEC_TS)
    assert not webhooks.verify(key, {**headers, "webhook-id": "msg_other"}, SPEC_BODY, now=SPEC_TS)
    assert not webhooks.verify(
        key, {**headers, "webhook-timestamp": str(SPEC_TS + 1)}, SPEC_BODY, now=SPEC_TS
    )


def test_verify_header_names_are_case_insensitive() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    upper = {k.upper(): v for k, v in _headers(key).items()}
    assert webhooks.verify(key, upper, SPEC_BODY, now=SPEC_TS)


def test_verify_time_tolerance() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    headers = _headers(key)
    assert webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS + 300)
    assert webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS - 300)
    assert not webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS + 301)
    assert not webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS - 301)
    assert webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS + 3000, tolerance_s=3600)


def test_verify_any_of_several_signatures() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    good = webhooks.sign(key, SPEC_ID, SPEC_TS, SPEC_BODY)
    stale = webhooks.sign(b"old key", SPEC_ID, SPEC_TS, SPEC_BODY)
    headers = {**_headers(key), "webhook-signature": f"{stale} v2,whatever {good}"}
    assert webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS)
    headers["webhook-signature"] = f"{stale} v2,whatever"
    assert not webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_needs_all_three_headers(missing: str) -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    headers = _headers(key)
    del headers[missing]
    assert not webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS)


def test_verify_rejects_a_non_numeric_timestamp() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    headers = {**_headers(key), "webhook-timestamp": "yesterday"}
    assert not webhooks.verify(key, headers, SPEC_BODY, now=SPEC_TS)


def test_parse_secret_decodes_the_key() -> None:
    raw = bytes(range(32))
    assert webhooks.parse_secret("whsec_" + base64.b64encode(raw).decode()) == raw
    # Unpadded base64 is accepted, as the reference libraries do.
    assert webhooks.parse_secret("whsec_" + base64.b64encode(raw).decode().rstrip("=")) == raw


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_",
        "whsec_not*base64!secretvalue",
        "",
    ],
)
def test_parse_secret_refuses_without_echoing(secret: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        webhooks.parse_secret(secret)
    message = str(info.value)
    assert "WEBHOOK_SECRET" in message
    body = secret.removeprefix("whsec_").removeprefix("WHSEC_")
    if body:
        assert body not in message
    restored = pickle.loads(pickle.dumps(info.value))
    assert str(restored) == message


def test_build_headers_signs_only_with_a_key() -> None:
    key = webhooks.parse_secret(SPEC_SECRET)
    signed = webhooks.build_headers(SPEC_ID, SPEC_TS, SPEC_BODY, key)
    assert signed["webhook-signature"] == SPEC_SIGNATURE
    assert signed["webhook-id"] == SPEC_ID
    assert signed["webhook-timestamp"] == str(SPEC_TS)
    assert signed["content-type"] == "application/json"
    assert signed["user-agent"] == "comfy-fleet"
    unsigned = webhooks.build_headers(SPEC_ID, SPEC_TS, SPEC_BODY, None)
    assert "webhook-signature" not in unsigned
    assert {k: v for k, v in signed.items() if k != "webhook-signature"} == unsigned


def test_webhook_id_is_stable_per_task_end() -> None:
    task_id = "7f1c2a8e-4c1d-4a57-9e57-0c7d8d1f2b3a"
    first = webhooks.webhook_id(task_id, 9)
    assert first == webhooks.webhook_id(task_id, 9)
    assert first != webhooks.webhook_id(task_id, 10)
    assert first != webhooks.webhook_id("11111111-4c1d-4a57-9e57-0c7d8d1f2b3a", 9)
    # The signed content is "<id>.<ts>.<body>": an id must not bring its own separator.
    assert "." not in first and " " not in first
    with pytest.raises(ValueError):
        webhooks.webhook_id("a.b", 1)
    with pytest.raises(ValueError):
        webhooks.webhook_id(task_id, 0)


def test_retry_delays_are_bounded_and_grow() -> None:
    policy = webhooks.RetryPolicy(max_attempts=12, base_delay_s=1.0, max_delay_s=60.0)
    rng = random.Random(42)
    ceilings = [policy.ceiling(n) for n in range(1, 12)]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] == policy.base_delay_s
    assert ceilings[-1] == policy.max_delay_s
    means = []
    for attempt in range(1, 12):
        delays = [policy.next_delay(attempt, rng) for _ in range(200)]
        assert all(d is not None and 0.0 <= d <= policy.ceiling(attempt) for d in delays)
        means.append(sum(d for d in delays if d is not None) / len(delays))
    # Full jitter: on average half the ceiling, so the averages grow until the cap.
    assert means[4] > means[2] > means[0]


def test_retry_stops_after_max_attempts() -> None:
    policy = webhooks.RetryPolicy(max_attempts=3)
    rng = random.Random(1)
    assert policy.next_delay(1, rng) is not None
    assert policy.next_delay(2, rng) is not None
    assert policy.next_delay(3, rng) is None
    assert webhooks.RetryPolicy(max_attempts=1).next_delay(1, rng) is None


def test_retry_respects_the_total_budget() -> None:
    policy = webhooks.RetryPolicy(
        max_attempts=50, base_delay_s=10, max_delay_s=10, total_budget_s=25
    )
    rng = random.Random(7)
    assert policy.next_delay(1, rng, elapsed_s=25) is None
    delay = policy.next_delay(5, rng, elapsed_s=24.5)
    assert delay is not None and delay <= 0.5
    # A whole schedule never passes the budget.
    elapsed, attempt = 0.0, 1
    while (delay := policy.next_delay(attempt, rng, elapsed)) is not None:
        elapsed += delay
        attempt += 1
    assert elapsed <= policy.total_budget_s


def test_retry_defaults_and_huge_attempt_numbers() -> None:
    policy = webhooks.RetryPolicy()
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s) == (8, 1.0, 300.0)
    assert policy.ceiling(10_000) == policy.max_delay_s
    with pytest.raises(ValueError):
        webhooks.RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        webhooks.RetryPolicy(base_delay_s=10, max_delay_s=1)


@pytest.mark.parametrize(
    ("status", "exc", "outcome"),
    [
        (200, None, "delivered"),
        (201, None, "delivered"),
        (204, None, "delivered"),
        (299, None, "delivered"),
        (301, None, "retry"),
        (400, None, "retry"),
        (410, None, "retry"),
        (429, None, "retry"),
        (500, None, "retry"),
        (503, None, "retry"),
        (None, TimeoutError(), "retry"),
        (None, ConnectionRefusedError(), "retry"),
        (None, None, "retry"),
    ],
)
def test_classify(status: int | None, exc: BaseException | None, outcome: str) -> None:
    assert webhooks.classify(status, exc) == outcome
