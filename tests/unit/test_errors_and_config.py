"""The exception tree survives pickling (Ray), and settings fail with one line naming the variable."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from comfy_fleet import errors
from comfy_fleet.config import Settings, parse_endpoint


@pytest.mark.parametrize("cls", errors.ALL_ERRORS)
def test_every_error_pickles(cls: type[errors.FleetError]) -> None:
    e = cls("a message", {"k": 1})
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and back.message == "a message" and back.details == {"k": 1}
    assert back.to_json()["error"]["code"] == cls.code
    assert cls().message  # the docstring is the default message


def env(**kw: str) -> dict[str, str]:
    return kw


def test_defaults_follow_the_contract(tmp_path: Path) -> None:
    s = Settings.from_env({}, dotenv=tmp_path / "none")
    assert (s.service_port, s.route_prefix, s.use_standins) == (8000, "/api/v1", True)
    assert s.workflows_dir.name == "workflows" and s.api_keys == ()


def test_endpoints_and_rdb(tmp_path: Path) -> None:
    s = Settings.from_env(
        env(COMFYUI_ENDPOINTS="127.0.0.1:8188, http://gpu-2:8189", RDB_USERNAME="u", RDB_PASSWORD="p@ss",
            RDB_HOST="db", RDB_PORT="6543", RDB_NAME="n"),
        dotenv=tmp_path / "none",
    )
    assert [e.name for e in s.comfyui_endpoints] == ["127.0.0.1:8188", "gpu-2:8189"]
    assert s.database_url == "postgresql://u:p%40ss@db:6543/n" and not s.use_standins


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dot = tmp_path / ".env"
    dot.write_text("SERVICE_PORT=9000\n# comment\nROUTE_PREFIX='/x'\n")
    s = Settings.from_env({"ROUTE_PREFIX": "/y"}, dotenv=dot)
    assert (s.service_port, s.route_prefix) == (9000, "/y")


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"COMFYUI_ENDPOINTS": "nohost"}, "COMFYUI_ENDPOINTS"),
        ({"COMFYUI_ENDPOINTS": "h:99999"}, "COMFYUI_ENDPOINTS"),
        ({"COMFYUI_ENDPOINTS": "ftp://h:1"}, "COMFYUI_ENDPOINTS"),
        ({"SERVICE_PORT": "-1"}, "SERVICE_PORT"),
        ({"SERVICE_PORT": "abc"}, "SERVICE_PORT"),
        ({"WEBHOOK_SECRET": "plain-secret"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": "whsec_not*base64!"}, "WEBHOOK_SECRET"),
        ({"ROUTE_PREFIX": "api"}, "ROUTE_PREFIX"),
        ({"WORKFLOWS_DIR": "/nonexistent/dir"}, "WORKFLOWS_DIR"),
        ({"SERVICE_HOST": "0.0.0.0"}, "SERVICE_HOST"),
        ({"ENDPOINT_QUEUE_DEPTH": "0"}, "ENDPOINT_QUEUE_DEPTH"),
        ({"URL_DENY_CIDRS": "10.0.0.0/33"}, "URL_DENY_CIDRS"),
        ({"INGRESS_PROXY": "nginx"}, "INGRESS_PROXY"),
    ],
)
def test_bad_values_name_the_variable(values: dict[str, str], variable: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env(values, dotenv=tmp_path / "none")
    message = str(info.value)
    assert message.startswith(variable + ":") and "\n" not in message
    assert "plain-secret" not in message


def test_open_bind_allowed_with_keys_or_explicit_flag(tmp_path: Path) -> None:
    assert Settings.from_env({"SERVICE_HOST": "0.0.0.0", "API_KEYS": "k1,k2"}, dotenv=tmp_path / "n").api_keys == ("k1", "k2")
    assert Settings.from_env(
        {"SERVICE_HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED_BIND": "true"}, dotenv=tmp_path / "n"
    ).allow_open_bind


def test_parse_endpoint_forms() -> None:
    assert parse_endpoint("https://h:443").base_url == "https://h:443"
    assert parse_endpoint("[::1]:8188").name == "[::1]:8188"


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"TENANT_KEYS": "acme"}, "TENANT_KEYS"),
        ({"TENANT_KEYS": "Acme:plain-secret"}, "TENANT_KEYS"),
        ({"TENANT_KEYS": "acme:plain-secret", "API_KEYS": "plain-secret"}, "TENANT_KEYS"),
        ({"TENANT_WEIGHTS": "acme=0"}, "TENANT_WEIGHTS"),
        ({"TENANT_WEIGHTS": "acme"}, "TENANT_WEIGHTS"),
        ({"TENANT_MAX_WAITING": "0"}, "TENANT_MAX_WAITING"),
        ({"TENANT_MAX_WAITING": "many"}, "TENANT_MAX_WAITING"),
    ],
)
def test_bad_tenant_settings_name_the_variable(values: dict[str, str], variable: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env(values, dotenv=tmp_path / "none")
    message = str(info.value)
    assert message.startswith(variable) and "\n" not in message
    assert "plain-secret" not in message


def test_tenant_settings(tmp_path: Path) -> None:
    from fractions import Fraction

    s = Settings.from_env(
        {
            "TENANT_KEYS": "acme:k-acme-1, acme:k-acme-2,beta:k-beta",
            "TENANT_WEIGHTS": "acme=3,beta=1.5",
            "TENANT_MAX_WAITING": "100",
        },
        dotenv=tmp_path / "none",
    )
    assert s.tenant_keys == (("acme", "k-acme-1"), ("acme", "k-acme-2"), ("beta", "k-beta"))
    assert s.weights == {"acme": Fraction(3), "beta": Fraction(3, 2)}
    assert s.tenant_max_waiting == 100
    assert "k-acme" not in repr(s) and "tenant_keys='***'" in repr(s)
    # Tenant keys alone guard a non-loopback bind as API keys do.
    assert Settings.from_env(
        {"SERVICE_HOST": "0.0.0.0", "TENANT_KEYS": "acme:k"}, dotenv=tmp_path / "n"
    ).tenant_keys
    defaults = Settings.from_env({}, dotenv=tmp_path / "n")
    assert (defaults.tenant_keys, defaults.weights, defaults.tenant_max_waiting) == ((), {}, None)
