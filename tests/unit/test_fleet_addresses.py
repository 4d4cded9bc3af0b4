"""The fleet rule of the URL policy: every address form of a fleet host's port is denied, and the
fleet it knows follows replace/add/remove. No I/O: resolver and own addresses are injected."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from comfy_fleet import errors
from comfy_fleet.policies import fleet_addresses, ip_ranges
from comfy_fleet.policies.url_policy import UrlPolicy

OWN = ["10.1.2.3", "fd12::3"]

#: Every way of writing "this machine, loopback" that a URL can carry.
LOOPBACK_FORMS = [
    "127.0.0.1", "127.0.0.2", "127.255.255.254", "[::1]", "[::ffff:127.0.0.2]",
    "[::127.0.0.1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]", "[::ffff:0:7f00:1]",
    "[64:ff9b:1:7f00:0:100::]",  # local-use NAT64, /48 layout
    "[2001:0:7f00:1::]",  # Teredo, server part
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client part 127.0.0.1 obfuscated
    "10.1.2.3", "[fd12::3]", "[::ffff:10.1.2.3]",  # this machine's own addresses
    "[0:0:0:0:0:ffff:7f00:2]",
]


def policy(fleet: fleet_addresses.FleetAddresses, **kwargs: Any) -> UrlPolicy:
    return dataclasses.replace(UrlPolicy.build(**kwargs), fleet=fleet)


def make_fleet(*endpoints: str, service: str = "127.0.0.1:8000") -> fleet_addresses.FleetAddresses:
    fleet = fleet_addresses.FleetAddresses()
    fleet.replace(endpoints)
    fleet.set_service([service])
    fleet.set_own(OWN)
    return fleet


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
@pytest.mark.parametrize("endpoint", ["127.0.0.1:8188", "comfy-1.internal:8188", "10.9.9.9:8188"])
def test_every_local_form_of_a_fleet_port_is_denied(form: str, endpoint: str) -> None:
    p = policy(make_fleet(endpoint))
    with pytest.raises(errors.UrlForbidden, match="ComfyUI endpoint of the fleet"):
            p.check_url(f"http://{form}:8188/interrupt")
    if not _always_denied(form):
        p.check_url(f"http://{form}:8189/hook")  # another port: a receiver on this machine


def _always_denied(form: str) -> bool:
    ip = ipaddress.ip_address(form.strip("[]"))
    return any(
        ip_ranges.in_any(r, nets) for r in ip_ranges.readings(ip) for _, nets in ip_ranges.DEFAULT_DENIED
    )


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_the_service_port_is_denied_on_every_local_form(form: str) -> None:
    p = policy(make_fleet("10.9.9.9:8188", service="0.0.0.0:8000"))
    with pytest.raises(errors.UrlForbidden, match="this service"):
        p.check_url(f"http://{form}:8000/api/v1/tasks")


@pytest.mark.parametrize(
    "form", ["10.9.9.9", "[::ffff:10.9.9.9]", "[::10.9.9.9]", "[2002:a09:909::1]", "[64:ff9b::a09:909]"]
)
def test_a_remote_endpoint_is_denied_at_each_form_of_its_address(form: str) -> None:
    p = policy(make_fleet("10.9.9.9:8188"))
    with pytest.raises(errors.UrlForbidden):
        p.check_url(f"http://{form}:8188/prompt")
    p.check_url(f"http://{form}:8190/hook")  # another port of that host: not the fleet


async def test_a_name_endpoint_is_denied_at_every_address_it_resolves_to() -> None:
    answers = {"comfy-1.internal": ["10.7.0.1", "fd00:7::1"], "hook.example": ["10.7.0.1"]}

    async def resolver(host: str, _port: int) -> list[str]:
        return answers[host]

    fleet = make_fleet("comfy-1.internal:8188")
    await fleet.resolve(resolver)
    p = policy(fleet, resolver=resolver)
    for url in ("http://10.7.0.1:8188/", "http://[fd00:7::1]:8188/", "http://[::ffff:10.7.0.1]:8188/",
                "http://comfy-1.internal:8188/", "http://hook.example:8188/"):
        with pytest.raises(errors.UrlForbidden):
            await p.resolve_and_check(url)
    assert await p.resolve_and_check("http://hook.example:9000/") == [ipaddress.ip_address("10.7.0.1")]


async def test_a_failing_resolver_keeps_the_last_answer() -> None:
    fleet = make_fleet("comfy-1.internal:8188")

    async def first(_h: str, _p: int) -> list[str]:
        return ["10.7.0.1"]

    async def broken(_h: str, _p: int) -> list[str]:
        raise OSError("no DNS")

    await fleet.resolve(first)
    await fleet.resolve(broken)
    assert fleet.current.denial(ipaddress.ip_address("10.7.0.1"), 8188)


def test_added_and_removed_endpoints_join_and_leave_the_rule() -> None:
    fleet = make_fleet("127.0.0.1:8188")
    p = policy(fleet)
    p.check_url("http://10.5.5.5:9999/")
    fleet.add("10.5.5.5:9999")
    with pytest.raises(errors.UrlForbidden):
        p.check_url("http://10.5.5.5:9999/")
    with pytest.raises(errors.UrlForbidden):
        p.check_url("http://[::1]:9999/")  # its port is now denied on loopback too
    fleet.remove("10.5.5.5:9999")
    p.check_url("http://10.5.5.5:9999/")
    fleet.replace(["[fd00::5]:7000"])
    with pytest.raises(errors.UrlForbidden):
        p.check_url("http://[fd00::5]:7000/")
    p.check_url("http://[::1]:8188/")  # 8188 left the fleet with the replace


def test_static_endpoints_survive_a_replace() -> None:
    fleet = fleet_addresses.FleetAddresses(static=["127.0.0.1:8188"])
    fleet.replace(["127.0.0.1:9000"])
    assert fleet.current.endpoints == {("127.0.0.1", 8188), ("127.0.0.1", 9000)}
    fleet.remove("127.0.0.1:8188")
    assert ("127.0.0.1", 8188) in fleet.current.endpoints


def test_from_settings_builds_a_fleet_from_the_configured_endpoints(tmp_path: object) -> None:
    from comfy_fleet.config import Settings

    settings = Settings.from_env(
        {"COMFYUI_ENDPOINTS": "127.0.0.1:8188,comfy-2:8188", "SERVICE_PORT": "8000"},
        dotenv=tmp_path / "none",  # type: ignore[operator]
    )
    p = UrlPolicy.from_settings(settings)
    assert p.fleet is not None
    for url in ("http://[::ffff:127.0.0.9]:8188/", "http://comfy-2:8188/", "http://127.0.0.5:8000/"):
        with pytest.raises(errors.UrlForbidden):
            p.check_url(url)


@pytest.mark.parametrize(
    "form",
    ["[::169.254.169.254]", "[::ffff:169.254.169.254]", "[2002:a9fe:a9fe::]", "[64:ff9b::a9fe:a9fe]",
     "[64:ff9b:1:a9fe:a9:fe00::]", "[2001:0:a9fe:a9fe::1]", "[::ffff:0:a9fe:a9fe]", "[::169.254.1.1]"],
)
def test_transition_forms_of_link_local_and_metadata_are_denied(form: str) -> None:
    p = UrlPolicy.build(allow_cidrs=["2000::/3", "::/96", "64:ff9b::/32"])  # allowing the wrapper allows nothing inside
    with pytest.raises(errors.UrlForbidden, match="metadata|link-local"):
        p.check_url(f"http://{form}/latest/meta-data/")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("::ffff:127.0.0.2", ["127.0.0.2"]),
        ("::127.0.0.1", ["127.0.0.1"]),
        ("2002:7f00:1::", ["127.0.0.1"]),
        ("64:ff9b::7f00:1", ["127.0.0.1"]),
        ("::1", []),
        ("::", []),
        ("2001:db8::1", []),
        ("10.0.0.1", []),
    ],
)
def test_embedded_ipv4(address: str, expected: list[str]) -> None:
    got = ip_ranges.embedded_ipv4(ipaddress.ip_address(address))
    assert [str(a) for a in got] == expected


def test_deny_private_sees_through_every_wrapper() -> None:
    p = UrlPolicy.build(deny_private=True)
    for form in ("[::ffff:10.0.0.1]", "[::10.0.0.1]", "[2002:a00:1::]", "[64:ff9b::a00:1]", "[::ffff:192.168.1.1]"):
        with pytest.raises(errors.UrlForbidden, match="private"):
            p.check_url(f"http://{form}/")
    UrlPolicy.build().check_url("http://[::1]:9000/")  # loopback stays allowed without it


@pytest.mark.parametrize(
    ("address", "port", "refused"),
    [
        ("127.0.0.1", 8188, False),
        ("10.0.0.5", 8188, False),
        ("169.254.169.254", 80, True),
        ("::ffff:169.254.169.254", 80, True),
        ("fe80::1", 8188, True),
        ("0.0.0.0", 8188, True),
        ("127.0.0.1", 8000, True),  # the service itself
        ("::1", 8000, True),
    ],
)
def test_endpoint_refusal(address: str, port: int, refused: bool) -> None:
    snap = make_fleet("127.0.0.1:8188").current
    why = fleet_addresses.endpoint_refusal(ipaddress.ip_address(address), port, snap)
    assert (why is not None) is refused, why


def test_parse_host_entry() -> None:
    assert fleet_addresses.parse_host_entry("http://Comfy-1.:8188/") == ("comfy-1", 8188)
    assert fleet_addresses.parse_host_entry("[::1]:8188") == ("::1", 8188)
    assert fleet_addresses.parse_host_entry("::1") == ("::1", None)
    with pytest.raises(ValueError):
        fleet_addresses.parse_host_entry("bad host:1")
    with pytest.raises(ValueError):
        fleet_addresses.FleetAddresses().add("no-port")
