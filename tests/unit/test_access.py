"""Keys, roles and tenants (comfy_fleet.policies.access): parsing, token resolution, decisions."""

from __future__ import annotations

import pickle
import random
from fractions import Fraction

import pytest

from comfy_fleet import errors
from comfy_fleet.policies import access
from comfy_fleet.policies.access import ADMIN, Principal

ACME = Principal("acme")
BETA = Principal("beta")


# --- parsing -------------------------------------------------------------------------------------


def test_api_keys_are_comma_separated_and_stripped() -> None:
    assert access.parse_api_keys(" k1 , k2,,") == ("k1", "k2")
    assert access.parse_api_keys(None) == ()


def test_tenant_keys_pairs_in_order_several_keys_per_tenant() -> None:
    pairs = access.parse_tenant_keys("acme:k1, beta:k2,acme:k3:with:colons")
    assert pairs == (("acme", "k1"), ("beta", "k2"), ("acme", "k3:with:colons"))
    assert access.parse_tenant_keys("") == ()


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        ("acme:k1,nokeyhere", 2),
        ("acme:", 1),
        ("Acme:secret-one", 1),
        ("acme:k1,beta:k2,:secret-two", 3),
        ("a b:secret-three", 1),
        (("x" * 65) + ":secret-four", 1),
    ],
)
def test_a_bad_tenant_key_pair_names_variable_and_position_never_the_key(
    raw: str, position: int
) -> None:
    with pytest.raises(errors.ConfigError) as info:
        access.parse_tenant_keys(raw)
    message = str(info.value)
    assert message.startswith("TENANT_KEYS: item ")
    assert f"item {position}" in message
    assert "secret" not in message and "nokeyhere" not in message


def test_tenant_names_follow_the_contract() -> None:
    assert access.is_tenant_name("a") and access.is_tenant_name("a-b_9" + "x" * 59)
    for bad in ("", "A", "a.b", "a/b", "x" * 65, "é", None, 3):
        assert not access.is_tenant_name(bad)


def test_weights_parse_exactly_and_default_to_nothing() -> None:
    assert access.parse_tenant_weights("acme=3, beta=1,gamma=0.5") == {
        "acme": Fraction(3), "beta": Fraction(1), "gamma": Fraction(1, 2),
    }
    assert access.parse_tenant_weights(None) == {}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("acme=0", "item 1 (acme): the weight must be > 0"),
        ("acme=1,beta=-2", "item 2 (beta)"),
        ("acme=x", "is not a number"),
        ("acme", "item 1 is not <tenant>=<weight>"),
        ("acme=1,acme=2", "listed twice"),
        ("ACME=1", "item 1"),
    ],
)
def test_bad_weights_name_variable_and_position(raw: str, fragment: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        access.parse_tenant_weights(raw)
    assert str(info.value).startswith("TENANT_WEIGHTS: ")
    assert fragment in str(info.value)


def test_max_waiting() -> None:
    assert access.parse_tenant_max_waiting(None) is None
    assert access.parse_tenant_max_waiting(" ") is None
    assert access.parse_tenant_max_waiting("50") == 50
    for bad in ("0", "-1", "ten"):
        with pytest.raises(errors.ConfigError, match="^TENANT_MAX_WAITING: "):
            access.parse_tenant_max_waiting(bad)


# --- the key ring ----------------------------------------------------------------------------------


def ring() -> access.KeyRing:
    return access.KeyRing.build(
        ["admin-key"], access.parse_tenant_keys("acme:acme-1,beta:beta-1,acme:acme-2")
    )


def test_tokens_resolve_to_their_principal() -> None:
    keys = ring()
    assert keys.resolve("admin-key") == ADMIN
    assert keys.resolve("acme-1") == ACME and keys.resolve(b"acme-2") == ACME
    assert keys.resolve("beta-1") == BETA
    assert keys.tenants() == frozenset({"acme", "beta"})


@pytest.mark.parametrize("token", [None, "", "acme-", "acme-1 ", "admin-key2", "²", b"\xff\x00"])
def test_unknown_tokens_resolve_to_nobody(token: str | bytes | None) -> None:
    assert ring().resolve(token) is None


def test_no_keys_at_all_is_admin_for_everyone() -> None:
    keys = access.KeyRing.build()
    assert keys.open
    assert keys.resolve(None) == ADMIN and keys.resolve("anything") == ADMIN


def test_only_tenant_keys_is_not_open() -> None:
    keys = access.KeyRing.build([], [("acme", "k")])
    assert not keys.open
    assert keys.resolve(None) is None and keys.resolve("k") == ACME


def test_a_key_listed_twice_is_refused_without_echoing_it() -> None:
    with pytest.raises(errors.ConfigError) as info:
        access.KeyRing.build(["dup-secret"], [("acme", "x"), ("beta", "dup-secret")])
    assert str(info.value) == "TENANT_KEYS item 2: this key is also API_KEYS item 1"
    with pytest.raises(errors.ConfigError, match="TENANT_KEYS item 2: this key is also TENANT_KEYS item 1"):
        access.KeyRing.build([], [("acme", "same"), ("beta", "same")])


def test_repr_never_shows_a_key() -> None:
    keys = ring()
    assert "acme-1" not in repr(keys) and "admin-key" not in repr(keys)


def test_every_key_is_compared_in_constant_time_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compare_digest over equal-length digests, once per key, for a hit on the first key, on
    the last, and for a miss alike: nothing exits early."""
    calls: list[tuple[int, int]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    keys = ring()
    for token in ("admin-key", "acme-2", "nobody", "x" * 500):
        calls.clear()
        keys.resolve(token)
        assert calls == [(32, 32)] * 4


def test_bearer_token() -> None:
    assert access.bearer_token(b"Bearer abc") == b"abc"
    assert access.bearer_token("bearer  abc ") == b"abc"
    for bad in (None, b"", b"Basic abc", b"Bearer", b"Bearer   "):
        assert access.bearer_token(bad) is None


# --- decisions ---------------------------------------------------------------------------------------


def test_a_tenant_reaches_only_its_own_tasks_as_if_others_did_not_exist() -> None:
    missing = errors.TaskNotFound("no task t1")
    access.check_access(ACME, "acme", missing)
    access.check_access(ADMIN, "beta", missing)
    with pytest.raises(errors.TaskNotFound) as info:
        access.check_access(ACME, "beta", missing)
    assert info.value is missing  # exactly what an unknown id answers
    assert access.may_access(ACME, "acme") and not access.may_access(BETA, "acme")


def test_tasks_recorded_before_tenants_belong_to_default() -> None:
    assert access.task_tenant(None) == "default"
    assert access.may_access(Principal("default"), None)
    assert not access.may_access(ACME, None)
    assert access.may_access(ADMIN, None)


@pytest.mark.parametrize(
    ("method", "path", "fleet"),
    [
        ("GET", "/endpoints", True),
        ("POST", "/endpoints", True),
        ("DELETE", "/endpoints/127.0.0.1:8188", True),
        ("get", "/endpoints/", True),
        ("POST", "/workflows/reload", True),
        ("GET", "/workflows", False),
        ("GET", "/workflows/reload", False),
        ("POST", "/tasks", False),
        ("GET", "/endpointsx", False),
    ],
)
def test_fleet_routes(method: str, path: str, fleet: bool) -> None:
    assert access.is_fleet_route(method, path) is fleet


def test_fleet_routes_are_forbidden_to_tenants() -> None:
    access.check_fleet(ADMIN)
    with pytest.raises(errors.Forbidden) as info:
        access.check_fleet(ACME)
    assert info.value.status == 403 and info.value.code == "forbidden"
    assert info.value.to_json()["error"]["code"] == "forbidden"


def test_submit_tenant() -> None:
    assert access.submit_tenant(ACME) == "acme"
    assert access.submit_tenant(ACME, "acme") == "acme"
    with pytest.raises(errors.Forbidden):
        access.submit_tenant(ACME, "beta")
    assert access.submit_tenant(ADMIN) == "default"
    assert access.submit_tenant(ADMIN, "beta") == "beta"
    for bad in ("", "Beta", 7, ["beta"], "x" * 65):
        with pytest.raises(errors.InvalidRequest) as info:
            access.submit_tenant(ADMIN, bad)
        assert info.value.status == 422 and info.value.details == {"field": "tenant"}


def test_a_tenant_naming_anything_else_is_forbidden_even_if_malformed() -> None:
    # 403, not 422: a tenant key may name only itself, whatever it names.
    with pytest.raises(errors.Forbidden):
        access.submit_tenant(ACME, "NOT A NAME")


def test_list_tenant() -> None:
    assert access.list_tenant(ACME) == "acme"
    assert access.list_tenant(ACME, "acme") == "acme"
    with pytest.raises(errors.Forbidden):
        access.list_tenant(ACME, "beta")
    assert access.list_tenant(ADMIN) is None
    assert access.list_tenant(ADMIN, "beta") == "beta"
    with pytest.raises(errors.InvalidRequest):
        access.list_tenant(ADMIN, "Beta!")


def test_check_waiting_is_a_429_with_retry_after() -> None:
    access.check_waiting("acme", 9, 10)
    access.check_waiting("acme", 10_000, None)
    with pytest.raises(errors.Overloaded) as info:
        access.check_waiting("acme", 10, 10, retry_after_s=7)
    assert info.value.status == 429
    assert info.value.details == {"tenant": "acme", "waiting": 10, "limit": 10, "retry_after_s": 7}


def test_forbidden_survives_pickling_and_is_a_fleet_error() -> None:
    exc = errors.Forbidden("no", {"tenant": "acme"})
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, errors.FleetError)
    assert (back.code, back.status, back.message, back.details) == ("forbidden", 403, "no", {"tenant": "acme"})
    assert errors.Forbidden().message == "This key may not do that."


def test_property_decisions_agree_with_ownership() -> None:
    """For random principals and tenants: access iff admin or same tenant; submit/list never
    hand a tenant key anything but its own tenant."""
    rng = random.Random(13)
    names = ["default", "acme", "beta", "gamma"]
    for _ in range(2000):
        principal = ADMIN if rng.random() < 0.25 else Principal(rng.choice(names))
        tenant = rng.choice([*names, None])
        assert access.may_access(principal, tenant) == (
            principal.is_admin or principal.tenant == (tenant or "default")
        )
        requested = rng.choice([*names, None])
        for decide in (access.submit_tenant, access.list_tenant):
            try:
                got = decide(principal, requested)
            except errors.Forbidden:
                assert not principal.is_admin and requested != principal.tenant
                continue
            if not principal.is_admin:
                assert got == principal.tenant
            elif requested is not None:
                assert got == requested
