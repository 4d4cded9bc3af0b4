"""Verifying the service's webhooks in a receiver (Standard Webhooks, CONTRACT §5).

    event = verify_webhook(request_body, request_headers, "whsec_...")

The signature is `v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">` with
the key decoded from the `whsec_<base64>` secret; `webhook-timestamp` must be within
`tolerance_s` of now (replays of old messages are refused). Use `webhook-id` to drop repeats:
it is the same for every try of one task end.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from comfy_fleet_client import errors, models

SECRET_PREFIX = "whsec_"
#: Seconds a webhook's timestamp may be from the receiver's clock (the specification's value).
DEFAULT_TOLERANCE_S = 300


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key: the decoded part of a `whsec_<base64>` secret (raw bytes pass through)."""
    if isinstance(secret, bytes):
        return secret
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret has the form whsec_<base64 key>")
    encoded = secret[len(SECRET_PREFIX) :].strip()
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not valid base64") from None


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value the service sends for this message."""
    digest = hmac.new(secret_key(secret), b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> models.WebhookEvent:
    """The webhook's body, typed, once its headers prove the service sent it.

    `payload` is the raw request body exactly as received (re-serialised JSON does not
    verify). Header names match case-insensitively; `webhook-signature` may list several
    space-separated signatures (key rotation): one valid one suffices. Raises
    `WebhookVerificationError` naming what is wrong.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sig_header = (
        lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    )
    missing = [n for n, v in (("webhook-id", msg_id), ("webhook-timestamp", ts_text),
                              ("webhook-signature", sig_header)) if not v]
    if missing:
        raise errors.WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    assert msg_id and ts_text and sig_header
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise errors.WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise errors.WebhookVerificationError(
            f"webhook-timestamp is {int(current - timestamp)} s from now; the tolerance is {tolerance_s:g} s",
            code="webhook_timestamp",
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    valid = False
    for candidate in sig_header.split():
        # No early exit: each candidate costs the same whichever matches.
        valid |= hmac.compare_digest(expected, candidate.encode())
    if not valid:
        raise errors.WebhookVerificationError("no valid v1 signature for this body and secret")
    try:
        return models.WebhookEvent.model_validate(json.loads(body))
    except ValueError as exc:
        raise errors.WebhookVerificationError(f"signed body is not a webhook event: {exc}") from None
