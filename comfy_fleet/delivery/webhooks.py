"""Webhooks per docs/api.md section 5: Standard Webhooks signing, the retry policy, and one sender.

Everything but ``WebhookSender`` is pure. This module decides how one try looks and what its
answer was; ``comfy_fleet/delivery/tries.py`` which events record it and what follows, and the
dispatcher (actors/webhook_dispatcher.py, actors/webhook_tries.py) which delivery runs when.

Standard Webhooks (https://www.standardwebhooks.com): the secret is ``whsec_<base64 key>``, the
key is the decoded bytes, and ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of
"<webhook-id>.<webhook-timestamp>.<body>">``. Its client libraries verify our headers as they are.

Outcomes: any 2xx is delivered. Everything else is retried: other statuses (3xx too, since
redirects are not followed, and 410 Gone too, because the contract says "anything else ... is
retried" and a receiver that is mid-deploy may answer 410 for a moment), timeouts and connection
errors. The one final failure is a URL the policy forbids: retrying cannot change that answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp
from yarl import URL

from comfy_fleet import errors

from comfy_fleet.net import pinned
from comfy_fleet.delivery import ids
from comfy_fleet.policies import url_policy

SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"
USER_AGENT = "comfy-fleet"
#: Default seconds for one webhook try, connect to last header.
WEBHOOK_TIMEOUT_S = 10.0
#: How far a receiver's clock may be from ours when verifying, per the specification.
DEFAULT_TOLERANCE_S = 300

#: The id of one task end's webhook (comfy_fleet/delivery/ids.py), in every try's headers.
webhook_id = ids.webhook_id

Outcome = Literal["delivered", "retry"]


def parse_secret(secret: str, *, name: str = "WEBHOOK_SECRET") -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret.

    Raises ``errors.ConfigError`` naming the setting; the message never contains the secret.
    """
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise errors.ConfigError(
            f"{name}: must have the Standard Webhooks form whsec_<base64 key>"
        )
    encoded = secret[len(SECRET_PREFIX) :].strip()
    try:
        # Padding is optional in the wild (the reference libraries add it back); be as lenient.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise errors.ConfigError(f"{name}: the part after whsec_ is not valid base64") from None
    if not key:
        raise errors.ConfigError(f"{name}: the key after whsec_ is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "<msg_id>.<timestamp>.<body>">``."""
    to_sign = b"%s.%d.%s" % (msg_id.encode(), int(timestamp), body)
    digest = hmac.new(key, to_sign, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``headers`` carry a valid v1 signature of ``body`` within the time tolerance.

    For receivers and tests. Header names are matched case-insensitively; ``webhook-signature``
    may hold several space-separated signatures (key rotation), any one valid one suffices.
    Signatures are compared in constant time.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts_text = lower.get("webhook-timestamp")
    sig_header = lower.get("webhook-signature")
    if not (msg_id and ts_text and sig_header):
        return False
    try:
        timestamp = int(ts_text)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(key, msg_id, timestamp, body).encode()
    valid = False
    for candidate in sig_header.split(" "):
        # No early exit: every candidate costs the same, whichever one matches.
        valid |= hmac.compare_digest(expected, candidate.encode())
    return valid


def build_headers(
    webhook_id: str, timestamp: int, body: bytes, key: bytes | None
) -> dict[str, str]:
    """The headers of one try; ``webhook-signature`` only when a key is set."""
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp)),
    }
    if key is not None:
        headers["webhook-signature"] = sign(key, webhook_id, timestamp, body)
    return headers


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by a number of tries and a total time.

    The delay before try ``n + 1`` is uniform in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]``
    ("full jitter": receivers that all failed at once do not all come back at once).
    """

    #: tries in all, the first included
    max_attempts: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    #: no retry starts later than this after the delivery began: its end was recorded, or its
    #: redelivery asked for (`tries.began_at`, from the log, so a restart keeps it)
    total_budget_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("RetryPolicy needs max_attempts >= 1 and 0 <= base <= max delay")
        if self.total_budget_s < 0:
            raise ValueError("RetryPolicy needs total_budget_s >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest delay after try number ``attempt`` (1-based) failed."""
        # min() before the power would overflow for a huge attempt count.
        exponent = min(max(attempt - 1, 0), 64)
        return min(self.max_delay_s, self.base_delay_s * 2.0**exponent)

    def next_delay(self, attempt: int, rng: random.Random, elapsed_s: float = 0.0) -> float | None:
        """Seconds to wait after try ``attempt`` (1-based) failed, or None when none is left.

        ``elapsed_s`` is the time since the delivery began; a delay is cut so the next try still
        starts within ``total_budget_s``, and none is given once the budget is spent.
        """
        if attempt >= self.max_attempts:
            return None
        remaining = self.total_budget_s - elapsed_s
        if remaining <= 0:
            return None
        return min(rng.uniform(0.0, self.ceiling(attempt)), remaining)


def classify(status_code: int | None, exc: BaseException | None = None) -> Outcome:
    """What one try meant: any 2xx is delivered, anything else is retried (see module doc)."""
    if exc is None and status_code is not None and 200 <= status_code < 300:
        return "delivered"
    return "retry"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one try. ``error`` is short and holds no secret, URL query or body."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_s: float
    #: no later try can succeed (the URL is forbidden): do not retry
    final: bool = False


#: Bytes of a receiver's answer we read to keep its connection (see `WebhookSender.send`).
KEEP_ALIVE_MAX_ANSWER = 16 * 1024


class WebhookSender:
    """Sends one webhook try over one pooled aiohttp session; never raises for HTTP trouble.

    No proxies from the environment, redirects not followed, no DNS cache, and every connection
    goes to an address it checked against the ``url_policy.UrlPolicy`` (``pinned.PinnedResolver``);
    TLS still verifies the certificate against the URL's host name. Open it with ``async with``
    or call ``aclose()``. aiohttp rather than httpx: a try costs about half the CPU
    (docs/performance.md), and webhooks are most of the service's outgoing requests.
    """

    def __init__(
        self,
        policy: url_policy.UrlPolicy,
        *,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        max_connections: int = 100,
    ) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._resolver = pinned.PinnedResolver(policy)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=self._resolver, use_dns_cache=False, limit=self._max_connections,
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt:
        """POST ``body`` to ``url`` once; the URL is checked against the policy first."""
        started = time.monotonic()

        def attempt(status: int | None, error: str | None, *, final: bool = False) -> Attempt:
            ok = error is None and classify(status) == "delivered"
            return Attempt(ok, status, error, time.monotonic() - started, final)

        try:
            parsed = self._policy.check_url(url)
            ips = await self._policy.resolve_and_check(parsed)
            self._resolver.pin(parsed, ips)
            # The whole try is bounded, not each read: a receiver that drips its headers
            # byte by byte must not hold a delivery slot for longer than the timeout.
            async with asyncio.timeout(self._timeout_s):
                async with self._http().post(
                    URL(parsed.url, encoded=True), data=body, headers=dict(headers),
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    # A short answer of known length is read to its end (within the try's
                    # bound), so its connection goes back to the pool even when the body comes
                    # after the headers: the next webhook to this receiver skips a connect and a
                    # TLS handshake. Any other is left unread, its size being the receiver's to
                    # choose, and its connection is closed unless it had all come already.
                    length = response.content_length
                    if length is not None and length <= KEEP_ALIVE_MAX_ANSWER:
                        await response.read()
        except url_policy.HostUnresolvable:
            return attempt(None, "dns_error: host could not be resolved")
        except (errors.UrlForbidden, errors.InvalidRequest) as exc:
            return attempt(None, f"url_forbidden: {exc.message}", final=True)
        except TimeoutError:
            return attempt(None, f"timeout: no answer within {self._timeout_s:g} s")
        except aiohttp.ClientConnectorError:
            return attempt(None, "connect_error: could not connect")
        except (aiohttp.ClientError, ValueError) as exc:
            # Only the class name: a client message may quote the URL with its query.
            return attempt(None, f"http_error: {type(exc).__name__}")
        if classify(status) == "delivered":
            return attempt(status, None)
        return attempt(status, f"http_status: {status}")
