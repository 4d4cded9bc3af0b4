"""The outgoing-URL policy: syntax, address decisions and their precedence, resolution."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import pickle
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from comfy_fleet import errors

from comfy_fleet.net import pinned
from comfy_fleet.policies import url_policy

DEFAULT = url_policy.UrlPolicy()


def fake_dns(table: dict[str, list[str]]) -> url_policy.Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://example.com:8443/a/b?token=x",
        "http://127.0.0.1:9000/",
        "http://[::1]:9000/",
        "http://10.1.2.3/",
        "http://192.168.1.10/",
        "http://172.16.0.1/",
        "http://8.8.8.8/",
        "http://[2001:4860:4860::8888]/",
        "http://receiver.internal_net.example/",
        "HTTP://Example.COM./x",
        "http://xn--nxasmq6b.com/",
    ],
)
def test_allowed_by_default(url: str) -> None:
    parsed = DEFAULT.check_url(url)
    assert parsed.scheme in {"http", "https"}
    assert parsed.port in {80, 443, 8443, 9000}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://168.63.129.16/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://0.1.2.3/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
        ("http://240.0.0.1/", "reserved"),
        # IPv4 in IPv6 clothing is judged as the IPv4 address it carries.
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "metadata"),
        ("http://[64:ff9b::169.254.169.254]/", "metadata"),
        ("http://[::ffff:0.0.0.0]/", "unspecified"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata service"),
        ("http://METADATA.google.internal./", "metadata service"),
        # Numbers the C resolver reads as IPv4 addresses (here all 127.0.0.1 or 169.254.169.254).
        ("http://2130706433/", "non-canonical"),
        ("http://0x7f.1/", "non-canonical"),
        ("http://127.1/", "non-canonical"),
        ("http://017700000001/", "non-canonical"),
        ("http://0xa9fea9fe/", "non-canonical"),
        ("http://1.2.3.4.5/", "non-canonical"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://user:hunter2@example.com/", "credentials"),
        ("http://user@example.com/", "credentials"),
        ("ftp://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme"),
        ("//example.com/x", "scheme"),
    ],
)
def test_forbidden_by_default(url: str, reason: str) -> None:
    with pytest.raises(errors.UrlForbidden) as info:
        DEFAULT.check_url(url)
    assert reason in info.value.message
    assert "hunter2" not in info.value.message
    assert info.value.code == "url_forbidden"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://",
        "http:///x",
        "http://a b/",
        "http://exa\nmple.com/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://exa$mple.com/",
        "http://-bad-.example/",
        "http://0251.0376.0251.0376/",  # httpx refuses zero-padded dotted quads itself
        "http://example.com/" + "a" * 2048,
    ],
)
def test_malformed_urls_are_invalid_requests(url: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        DEFAULT.check_url(url)
    assert not isinstance(info.value, errors.UrlForbidden)


def test_length_limit_is_inclusive() -> None:
    base = "http://example.com/"
    DEFAULT.check_url(base + "a" * (2048 - len(base)))
    with pytest.raises(errors.InvalidRequest, match="2048"):
        DEFAULT.check_url(base + "a" * (2049 - len(base)))


def test_parsed_url_normalises_and_redacts() -> None:
    parsed = DEFAULT.check_url("HTTPS://Example.COM./hook/1?token=secret#frag")
    assert parsed.host == "example.com"
    assert parsed.port == 443
    assert parsed.ip is None
    assert parsed.redacted == "https://example.com:443/hook/1"
    assert "secret" not in parsed.redacted
    assert "frag" not in parsed.url
    v6 = DEFAULT.check_url("http://[::1]:9000/x?y=1")
    assert v6.ip == ipaddress.ip_address("::1")
    assert v6.redacted == "http://[::1]:9000/x"
    assert url_policy.url_redacted("http://u:p@h.example/a?secret=1") == "http://h.example/a"


def test_deny_private_denies_loopback_and_private_ranges() -> None:
    strict = url_policy.UrlPolicy(deny_private=True)
    for url in [
        "http://127.0.0.1/",
        "http://127.8.9.10/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://172.31.255.255/",
        "http://192.168.0.1/",
        "http://100.64.0.1/",
        "http://[fd12:3456::1]/",
    ]:
        with pytest.raises(errors.UrlForbidden, match="private or loopback"):
            strict.check_url(url)
    strict.check_url("http://8.8.8.8/")
    strict.check_url("http://172.32.0.1/")


def test_deny_hosts_by_host_and_by_host_port() -> None:
    policy = url_policy.UrlPolicy.build(
        deny_hosts=["127.0.0.1:8188", "comfy.example", "[::1]:8000", "api.example:443"]
    )
    with pytest.raises(errors.UrlForbidden, match="denied"):
        policy.check_url("http://127.0.0.1:8188/prompt")
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://[::ffff:127.0.0.1]:8188/prompt")
    policy.check_url("http://127.0.0.1:9000/hook")  # another port on the same host is fine
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://comfy.example:1234/")
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://COMFY.example./")
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://[::1]:8000/")
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("https://api.example/")  # default port counts
    policy.check_url("http://api.example/")


def test_unspecified_deny_entry_covers_loopback_on_its_port() -> None:
    policy = url_policy.UrlPolicy.build(deny_hosts=["0.0.0.0:8000"])
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://127.0.0.1:8000/api/v1/tasks")
    policy.check_url("http://127.0.0.1:8001/")


def test_precedence_deny_hosts_and_deny_cidrs_beat_allow_cidrs_beats_defaults() -> None:
    policy = url_policy.UrlPolicy.build(
        deny_hosts=["169.254.10.10"],
        deny_cidrs=["169.254.20.0/24", "203.0.113.0/24"],
        allow_cidrs=["169.254.0.0/16", "10.0.0.0/8"],
        deny_private=True,
    )
    policy.check_url("http://169.254.30.1/")  # allow list beats the built-in link-local deny
    policy.check_url("http://169.254.169.254/")  # ...the metadata one too: the operator said so
    policy.check_url("http://10.2.3.4/")  # ...and deny_private
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://169.254.10.10/")  # an explicit deny_hosts entry wins
    with pytest.raises(errors.UrlForbidden, match="denied network"):
        policy.check_url("http://169.254.20.5/")  # deny_cidrs wins over allow_cidrs
    with pytest.raises(errors.UrlForbidden, match="denied network"):
        policy.check_url("http://203.0.113.9/")
    with pytest.raises(errors.UrlForbidden, match="private"):
        policy.check_url("http://192.168.1.1/")
    with pytest.raises(errors.UrlForbidden, match="metadata service"):
        policy.check_url("http://metadata.google.internal/")  # names are not CIDRs


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"deny_hosts": ["host:notaport"]}, "URL_DENY_HOSTS"),
        ({"deny_hosts": ["host:70000"]}, "URL_DENY_HOSTS"),
        ({"deny_cidrs": ["10.0.0.0/33"]}, "URL_DENY_CIDRS"),
        ({"allow_cidrs": ["not-a-network"]}, "URL_ALLOW_CIDRS"),
    ],
)
def test_build_names_the_bad_setting(kwargs: dict[str, list[str]], name: str) -> None:
    with pytest.raises(errors.ConfigError, match=name) as info:
        url_policy.UrlPolicy.build(**kwargs)
    assert pickle.loads(pickle.dumps(info.value)).message == info.value.message


def test_build_accepts_urls_and_bare_ipv6_in_deny_hosts() -> None:
    policy = url_policy.UrlPolicy.build(deny_hosts=["http://Comfy.Example:8188", "fd00::5", " "])
    assert policy.deny_hosts == {("comfy.example", 8188), ("fd00::5", None)}


async def test_resolve_checks_every_address() -> None:
    policy = url_policy.UrlPolicy(
        resolver=fake_dns(
            {
                "good.example": ["93.184.216.34", "2606:2800:220:1::1"],
                "mixed.example": ["93.184.216.34", "169.254.169.254"],
                "mapped.example": ["::ffff:169.254.169.254"],
                "loop.example": ["127.0.0.1"],
            }
        )
    )
    ips = await policy.resolve_and_check("http://good.example/")
    assert [str(ip) for ip in ips] == ["93.184.216.34", "2606:2800:220:1::1"]
    with pytest.raises(errors.UrlForbidden, match=r"mixed\.example"):
        await policy.resolve_and_check("http://mixed.example/")
    with pytest.raises(errors.UrlForbidden, match="metadata"):
        await policy.resolve_and_check("http://mapped.example/")
    assert await policy.resolve_and_check("http://loop.example/")
    with pytest.raises(url_policy.HostUnresolvable):
        await policy.resolve_and_check("http://nowhere.example/")
    assert await policy.resolve_and_check("http://8.8.8.8/") == [ipaddress.ip_address("8.8.8.8")]


async def test_resolve_matches_denied_names_by_address() -> None:
    policy = url_policy.UrlPolicy.build(
        deny_hosts=["comfy.local:8188"],
        resolver=fake_dns({"comfy.local": ["10.0.0.7"], "alias.example": ["10.0.0.7"]}),
    )
    with pytest.raises(errors.UrlForbidden, match=r"comfy\.local"):
        await policy.resolve_and_check("http://alias.example:8188/")
    with pytest.raises(errors.UrlForbidden):
        await policy.resolve_and_check("http://10.0.0.7:8188/")
    await policy.resolve_and_check("http://alias.example:9000/")


async def test_pinned_transport_connects_to_the_checked_address() -> None:
    seen: list[tuple[httpx.URL, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url, request.headers["host"], request.extensions.get("sni_hostname")))
        return httpx.Response(200)

    policy = url_policy.UrlPolicy(resolver=fake_dns({"hook.example": ["93.184.216.34"]}))
    transport = pinned.PinnedTransport(policy, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("https://hook.example/a?b=1")
    assert response.status_code == 200
    ((url, host_header, sni),) = seen
    assert url.host == "93.184.216.34"
    assert url.raw_path == b"/a?b=1"
    assert host_header == "hook.example"
    assert sni == "hook.example"
    # The caller sees the URL it asked for (relative redirects resolve against the name).
    assert response.url == httpx.URL("https://hook.example/a?b=1")


async def test_pinned_transport_refuses_before_connecting() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    policy = url_policy.UrlPolicy(resolver=fake_dns({"rebind.example": ["169.254.169.254"]}))
    transport = pinned.PinnedTransport(policy, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(errors.UrlForbidden):
            await client.get("http://rebind.example/")
        with pytest.raises(errors.UrlForbidden):
            await client.get("http://169.254.169.254/")
    assert seen == []


def test_from_settings_denies_the_service_and_the_endpoints(tmp_path: Path) -> None:
    from comfy_fleet import config

    settings = config.Settings.from_env(
        {"COMFYUI_ENDPOINTS": "127.0.0.1:8188,http://[::1]:8189", "SERVICE_PORT": "8123"},
        dotenv=tmp_path / "absent.env",
    )
    policy = url_policy.UrlPolicy.from_settings(settings, extra_deny_hosts=["127.0.0.1:8190"])
    for url in [
        "http://127.0.0.1:8188/history",
        "http://[::1]:8189/",
        "http://127.0.0.1:8123/api/v1/tasks",
        "http://127.0.0.1:8190/",
    ]:
        with pytest.raises(errors.UrlForbidden):
            policy.check_url(url)
    policy.check_url("http://127.0.0.1:9999/hook")


async def _never_answers(host: str, port: int) -> list[str]:
    await asyncio.Event().wait()  # a DNS server that swallows the query
    raise AssertionError("unreachable")


async def test_a_resolver_that_never_answers_fails_the_check_within_the_bound() -> None:
    policy = url_policy.UrlPolicy(resolver=_never_answers, resolve_timeout_s=0.2)
    # The guard only turns a hang into a failure; the bound under test is the policy's.
    with pytest.raises(url_policy.HostUnresolvable) as caught:
        await asyncio.wait_for(policy.resolve_and_check("http://slow.example/hook"), 10)
    assert caught.value.message == "host 'slow.example' did not resolve within 0.2 s"


async def test_a_deny_entry_that_never_resolves_does_not_hold_the_check() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        if host == "hook.example":
            return ["93.184.216.34"]
        return await _never_answers(host, port)

    policy = url_policy.UrlPolicy.build(deny_hosts=["comfy.slow"], resolver=resolver)
    policy = dataclasses.replace(policy, resolve_timeout_s=0.2)
    ips = await asyncio.wait_for(policy.resolve_and_check("http://hook.example/"), 10)
    assert [str(ip) for ip in ips] == ["93.184.216.34"]


def test_the_default_dns_bound_is_a_few_seconds() -> None:
    assert 0 < url_policy.UrlPolicy().resolve_timeout_s == url_policy.RESOLVE_TIMEOUT_S <= 10
