"""The one exception tree of the client.

    ComfyFleetError                 code, message, details, status (None when no HTTP answer)
    ├── InvalidRequest              400, 413, 422: the request is wrong; fix it, do not retry
    ├── Unauthorized                401: no key, or a key the server does not hold
    ├── Forbidden                   403: the key may not do this
    ├── NotFound                    404: no such task, batch, workflow or route
    ├── Conflict                    409: e.g. the same client_task_id with another body
    ├── RateLimited                 429: too many waiting tasks; `retry_after` seconds
    ├── Unavailable                 502, 503, 504: retryable
    ├── Unreachable                 no HTTP answer at all (refused, DNS, TLS, timeout)
    ├── WaitTimeout                 `wait` ran out of time (also a TimeoutError)
    ├── IntegrityError              a downloaded output does not match its sha256 or size
    └── WebhookVerificationError    a webhook's headers do not prove it came from the service

Every server error carries the server's `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any

import httpx


class ComfyFleetError(Exception):
    """An error from comfy-fleet or from talking to it."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details
        self.status = status

    def __str__(self) -> str:
        where = f" ({self.status})" if self.status else ""
        return f"{self.code}{where}: {self.message}"

    def __reduce__(self) -> Any:
        # Keyword-only state survives pickling (e.g. across processes).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[ComfyFleetError], message: str, state: dict[str, Any]) -> ComfyFleetError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidRequest(ComfyFleetError):
    default_code = "invalid_request"


class Unauthorized(ComfyFleetError):
    default_code = "unauthorized"


class Forbidden(ComfyFleetError):
    default_code = "forbidden"


class NotFound(ComfyFleetError):
    default_code = "not_found"


class Conflict(ComfyFleetError):
    default_code = "conflict"


class RateLimited(ComfyFleetError):
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        #: seconds the server asks to wait before trying again (its Retry-After), if it said
        self.retry_after = retry_after


class Unavailable(ComfyFleetError):
    default_code = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unreachable(ComfyFleetError):
    default_code = "unreachable"


class WaitTimeout(ComfyFleetError, TimeoutError):
    default_code = "wait_timeout"


class IntegrityError(ComfyFleetError):
    default_code = "output_integrity"


class WebhookVerificationError(ComfyFleetError):
    default_code = "webhook_invalid"


_BY_STATUS: dict[int, type[ComfyFleetError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from this service, not worth parsing


def from_response(response: httpx.Response) -> ComfyFleetError:
    """The exception for an error answer, from the service's error shape when it has one."""
    code: str | None = None
    message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    details: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = str(err.get("message") or message)
        details = err.get("details")
    elif isinstance(body, dict) and "detail" in body:  # a plain FastAPI/Starlette answer
        message = str(body["detail"])
    cls = _BY_STATUS.get(response.status_code, ComfyFleetError)
    kw: dict[str, Any] = {"code": code, "details": details, "status": response.status_code}
    if cls in (RateLimited, Unavailable):
        kw["retry_after"] = _retry_after(response)
    if cls is ComfyFleetError and code is None:
        kw["code"] = "server_error" if response.status_code >= 500 else "http_error"
    return cls(message, **kw)


def from_transport(exc: httpx.TransportError, url: str) -> ComfyFleetError:
    """The exception for a request that got no HTTP answer."""
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"no answer from {url} in time ({type(exc).__name__})", code="timeout")
    reason = str(exc) or type(exc).__name__
    return Unreachable(f"cannot reach the server at {url}: {reason}")
