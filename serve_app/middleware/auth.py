"""Authentication: the API key of a request, resolved to a `policies.access.Principal` that routes
read from `request.state.principal` (see `serve_app.routes.context.principal`).

A key of `API_KEYS` is an admin's, a key of `TENANT_KEYS` one tenant's (docs/api.md §7.1); with
no key configured at all every request is the admin's (the loopback default). Keys are matched
by `access.KeyRing` (digests compared in constant time, every key each time). The paths in
`OPEN_PATHS` need no key; a key sent to them is still resolved, so their principal is `None`
only when none (or a wrong one) was sent. What a principal may do is the routes' to decide.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from comfy_fleet.config import Settings
from comfy_fleet.policies import access
from serve_app import console, responses

#: Paths (under ROUTE_PREFIX) that answer without a key: health checks for load balancers.
OPEN_PATHS = ("/healthz", "/readyz")
#: The API's description at the service root: it holds no data, and client generators fetch it.
DOCUMENT_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class Authenticate:
    """Answers 401 in the error shape to a request without a valid `Authorization: Bearer`
    key (unless its path is open); else puts its `Principal` in `scope["state"]["principal"]`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.ring = access.KeyRing.build(settings.api_keys, settings.tenant_keys)
        self.open = {settings.route_prefix + p for p in OPEN_PATHS}
        #: API routes are never the console's, whatever ROUTE_PREFIX is (e.g. "/console/api")
        self.api_root = settings.route_prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = self.resolve(scope)
        path = scope["path"]
        open_path = path in self.open or path in DOCUMENT_PATHS or (
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

    def resolve(self, scope: Scope) -> access.Principal | None:
        """The principal of the request's bearer key (ADMIN when no key is configured), or
        None. Timing reveals neither which key matched nor how much of one."""
        header = None
        for name, raw in scope.get("headers") or []:
            if name == b"authorization":
                header = raw
        return self.ring.resolve(access.bearer_token(header))
