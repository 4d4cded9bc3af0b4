"""Authentication: the API key of a request, resolved to a `Principal` that routes read from
`request.state.principal` (see `serve_app.routes.context.principal`).

Today every key of `API_KEYS` is an admin key, and with no keys configured every request is
the admin (the loopback default). The paths in `OPEN_PATHS` need no key; a key sent to them is
still resolved, so their principal is `None` only when none (or a wrong one) was sent.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from comfy_fleet.config import Settings
from serve_app import console, responses

#: Paths (under ROUTE_PREFIX) that answer without a key: health checks for load balancers.
OPEN_PATHS = ("/healthz", "/readyz")

ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. Carries no secret: safe to log."""

    #: what the key may do; only `ADMIN` exists so far
    role: str
    #: which key of its list authenticated the request (`None`: no keys are configured)
    key_index: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


#: The principal of every request when no keys are configured.
OPEN_ADMIN = Principal(role=ADMIN)


class Authenticate:
    """Answers 401 in the error shape to a request without a valid `Authorization: Bearer`
    key (unless its path is open); else puts its `Principal` in `scope["state"]["principal"]`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = [k.encode() for k in settings.api_keys]
        self.open = {settings.route_prefix + p for p in OPEN_PATHS}
        #: API routes are never the console's, whatever ROUTE_PREFIX is (e.g. "/console/api")
        self.api_root = settings.route_prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = self.resolve(scope) if self.keys else OPEN_ADMIN
        path = scope["path"]
        open_path = path in self.open or (
            console.is_open(path) and self.api_root != "/" and not path.startswith(self.api_root)
        )
        if principal is None and not open_path:
            await responses.error(
                401, "unauthorized",
                "this API needs an API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="comfy-fleet"'},
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def resolve(self, scope: Scope) -> Principal | None:
        """The principal of the request's bearer key, or None. Every key is compared, each in
        constant time, so timing reveals neither which key matched nor how much of one."""
        token = _bearer_token(scope)
        if token is None:
            return None
        found: int | None = None
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(key, token) and found is None:
                found = index
        return None if found is None else Principal(role=ADMIN, key_index=found)


def _bearer_token(scope: Scope) -> bytes | None:
    value: Any = b""
    for name, raw in scope.get("headers") or []:
        if name == b"authorization":
            value = raw
    scheme, _, token = value.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return bytes(token)
