"""Keys, roles and tenants (docs/api.md §7.1), pure: who a bearer token is, and what it may do.

Two roles. An **admin** (a key of `API_KEYS`, or anyone when no key is configured at all) may do
everything. A **tenant** (a key of `TENANT_KEYS`, `<tenant>:<key>` pairs) may work with its own
tenant's tasks and batches only: another tenant's task answers exactly as an unknown id does, the
fleet routes answer 403 `forbidden`, and naming another tenant answers 403 `forbidden`.

Parsing errors are `errors.ConfigError` naming the variable and the 1-based position of the bad
item; a key is never part of a message. Tokens are matched by comparing SHA-256 digests with
`hmac.compare_digest` against every configured key, with no early exit, so neither the time nor the
result of a failed match tells which key (or how long a key) is close.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from comfy_fleet import errors

#: The tenant of tasks submitted by an admin without a `tenant`, and of tasks recorded before
#: tenants existed.
DEFAULT_TENANT = "default"
#: What a tenant name may be (docs/api.md §7.1).
TENANT_NAME = re.compile(r"[a-z0-9_-]{1,64}")



@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin (`tenant` None) or one tenant."""

    tenant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


#: The principal of an admin key, and of every request when no key is configured.
ADMIN = Principal(None)


def is_tenant_name(name: object) -> bool:
    return isinstance(name, str) and TENANT_NAME.fullmatch(name) is not None


# --- parsing the settings ------------------------------------------------------------------------


def _items(raw: str | None) -> list[str]:
    """Comma-separated items, stripped; empty items (a trailing comma) are dropped."""
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def parse_api_keys(raw: str | None) -> tuple[str, ...]:
    """`API_KEYS`: comma-separated admin keys."""
    return tuple(_items(raw))


def parse_tenant_keys(raw: str | None, variable: str = "TENANT_KEYS") -> tuple[tuple[str, str], ...]:
    """`TENANT_KEYS`: comma-separated `<tenant>:<key>` pairs → ((tenant, key), …) in order.
    Several keys may share a tenant. A bad pair raises ConfigError naming its position."""
    pairs: list[tuple[str, str]] = []
    for position, item in enumerate(_items(raw), start=1):
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key:
            raise errors.ConfigError(
                f"{variable}: item {position} is not <tenant>:<key> (the key is missing)"
            )
        if not is_tenant_name(tenant):
            raise errors.ConfigError(
                f"{variable}: item {position}: the tenant name must be 1 to 64 of a-z, 0-9, _ and -"
            )
        pairs.append((tenant, key))
    return tuple(pairs)


def parse_tenant_weights(raw: str | None, variable: str = "TENANT_WEIGHTS") -> dict[str, Fraction]:
    """`TENANT_WEIGHTS`: `acme=3,beta=1` → {tenant: weight}; weights are positive numbers, kept
    exact (a Fraction of the decimal written) so that fair-share ties are exact too."""
    weights: dict[str, Fraction] = {}
    for position, item in enumerate(_items(raw), start=1):
        tenant, sep, value = item.partition("=")
        tenant, value = tenant.strip(), value.strip()
        if not sep or not is_tenant_name(tenant):
            raise errors.ConfigError(
                f"{variable}: item {position} is not <tenant>=<weight> with a tenant name "
                "of 1 to 64 of a-z, 0-9, _ and -"
            )
        try:
            weight = Fraction(value)
        except (ValueError, ZeroDivisionError):
            raise errors.ConfigError(
                f"{variable}: item {position} ({tenant}): {value!r} is not a number"
            ) from None
        if weight <= 0:
            raise errors.ConfigError(f"{variable}: item {position} ({tenant}): the weight must be > 0")
        if tenant in weights:
            raise errors.ConfigError(f"{variable}: item {position}: tenant {tenant} is listed twice")
        weights[tenant] = weight
    return weights


def parse_tenant_max_waiting(raw: str | None, variable: str = "TENANT_MAX_WAITING") -> int | None:
    """`TENANT_MAX_WAITING`: the most tasks one tenant may have waiting; unset: no per-tenant cap
    (the fleet-wide MAX_WAITING_TASKS still applies)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise errors.ConfigError(f"{variable}: {raw.strip()!r} is not an integer") from None
    if value < 1:
        raise errors.ConfigError(f"{variable}: {value} must be >= 1")
    return value


# --- resolving a token -----------------------------------------------------------------------------


def _digest(key: str | bytes) -> bytes:
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True)
class KeyRing:
    """The configured keys and whose each is. Build with `KeyRing.build`; `resolve` maps a bearer
    token to its Principal. The keys are held as digests only and never shown by repr."""

    #: (sha256 of the key, its principal), admin keys first, in configuration order.
    entries: tuple[tuple[bytes, Principal], ...] = field(default=(), repr=False)

    @classmethod
    def build(
        cls, api_keys: Iterable[str] = (), tenant_keys: Iterable[tuple[str, str]] = ()
    ) -> KeyRing:
        """A key listed twice (in either variable) is a ConfigError: with two owners a token
        would have two principals."""
        entries: list[tuple[bytes, Principal]] = []
        seen: dict[bytes, str] = {}
        sources = [("API_KEYS", key, ADMIN) for key in api_keys] + [
            ("TENANT_KEYS", key, Principal(tenant)) for tenant, key in tenant_keys
        ]
        counters = {"API_KEYS": 0, "TENANT_KEYS": 0}
        for variable, key, principal in sources:
            counters[variable] += 1
            where = f"{variable} item {counters[variable]}"
            digest = _digest(key)
            if digest in seen:
                raise errors.ConfigError(f"{where}: this key is also {seen[digest]}")
            seen[digest] = where
            entries.append((digest, principal))
        return cls(tuple(entries))

    @property
    def open(self) -> bool:
        """No key at all: every request is an admin's (the service listens on loopback only)."""
        return not self.entries

    def tenants(self) -> frozenset[str]:
        return frozenset(p.tenant for _, p in self.entries if p.tenant is not None)

    def resolve(self, token: str | bytes | None) -> Principal | None:
        """The principal of a bearer token, or None (→ 401). With no keys configured, ADMIN.

        Every configured key is compared, each in constant time over equal-length digests,
        and the loop never exits early: a miss and a hit on any key cost the same."""
        if self.open:
            return ADMIN
        if token is None:
            return None
        offered = _digest(token)
        found: Principal | None = None
        for digest, principal in self.entries:
            hit = hmac.compare_digest(digest, offered)
            # Branch-free in effect: both arms assign; keys are distinct so at most one hits.
            found = principal if hit else found
        return found


def bearer_token(authorization: bytes | str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if authorization is None:
        return None
    value = authorization.encode("latin-1") if isinstance(authorization, str) else authorization
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


# --- authorization decisions ---------------------------------------------------------------------


def task_tenant(recorded: str | None) -> str:
    """The tenant of a recorded task or batch: tasks recorded before tenants existed have none
    and belong to `default`."""
    return recorded or DEFAULT_TENANT


def may_access(principal: Principal, tenant: str | None) -> bool:
    """May `principal` read, stream, cancel, rerun or redeliver a task (or batch) of `tenant`?
    The same answer for every one of those actions: a tenant only its own, an admin all."""
    return principal.is_admin or principal.tenant == task_tenant(tenant)


def check_access(principal: Principal, tenant: str | None, missing: errors.NotFound) -> None:
    """Raise `missing` — the very error the caller raises for an unknown id — unless
    `may_access`: another tenant's task answers exactly as an unknown one (docs/api.md §7.1)."""
    if not may_access(principal, tenant):
        raise missing


#: Routes that change or read the fleet: (method or "*", path below ROUTE_PREFIX, a trailing
#: "/*" matching any deeper path).
FLEET_ROUTES: tuple[tuple[str, str], ...] = (
    ("*", "/endpoints"),
    ("*", "/endpoints/*"),
    ("POST", "/workflows/reload"),
)


def is_fleet_route(method: str, path: str) -> bool:
    """Is `method path` (path below ROUTE_PREFIX) a route that changes or reads the fleet?"""
    method = method.upper()
    path = "/" + path.strip("/")
    for route_method, pattern in FLEET_ROUTES:
        if route_method not in ("*", method):
            continue
        if pattern.endswith("/*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


def check_fleet(principal: Principal) -> None:
    """Fleet routes (`GET`/`POST`/`DELETE /endpoints`, `POST /workflows/reload`) are admin only."""
    if not principal.is_admin:
        raise errors.Forbidden("a tenant key may not read or change the fleet", {"tenant": principal.tenant})


def _checked_name(name: object, where: str) -> str:
    if not is_tenant_name(name):
        raise errors.InvalidRequest(
            f"{where}: a tenant name is 1 to 64 of a-z, 0-9, _ and -", {"field": "tenant"}
        )
    assert isinstance(name, str)
    return name


def submit_tenant(principal: Principal, requested: object = None) -> str:
    """The tenant a new task or batch belongs to. `requested` is the body's `"tenant"` (None
    when absent): a tenant key gets its own and may name only its own (else 403); an admin may
    name any valid tenant (else 422), and gets `default` when it names none."""
    if principal.tenant is not None:
        if requested is not None and requested != principal.tenant:
            raise errors.Forbidden("a tenant key may not name another tenant", {"field": "tenant"})
        return principal.tenant
    if requested is None:
        return DEFAULT_TENANT
    return _checked_name(requested, "tenant")


def list_tenant(principal: Principal, requested: str | None = None) -> str | None:
    """The tenant filter of a listing (`GET /tasks`, `GET /batches`); `requested` is `?tenant=`.
    A tenant key lists only its own (naming another: 403); an admin lists all (None) or the
    one it names (a malformed name: 422)."""
    if principal.tenant is not None:
        if requested is not None and requested != principal.tenant:
            raise errors.Forbidden("a tenant key may not list another tenant's tasks", {"field": "tenant"})
        return principal.tenant
    if requested is None:
        return None
    return _checked_name(requested, "?tenant")


def check_waiting(
    tenant: str, waiting: int, limit: int | None, *, retry_after_s: int = 5
) -> None:
    """Admission under `TENANT_MAX_WAITING`: with `waiting` of the tenant's tasks already
    waiting, one more is refused (429 with Retry-After, via errors.Overloaded) at the limit."""
    if limit is not None and waiting >= limit:
        raise errors.Overloaded(
            f"tenant {tenant} has {waiting} tasks waiting (limit {limit}); retry later",
            {"tenant": tenant, "waiting": waiting, "limit": limit, "retry_after_s": retry_after_s},
        )
