"""The address ranges the URL policy knows by heart, and how an IPv6 address carrying an IPv4
address is read. Pure data and arithmetic; ``url_policy`` holds the rules' precedence."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: Built-in denies (rule 5), each with the reason that goes into the error message.
DEFAULT_DENIED: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    (
        "cloud metadata address",
        _nets(
            "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, ...
            "fd00:ec2::254/128",  # AWS over IPv6
            "100.100.100.200/32",  # Alibaba Cloud
            "168.63.129.16/32",  # Azure wire server
            "192.0.0.192/32",  # Oracle Cloud
        ),
    ),
    ("unspecified address", _nets("0.0.0.0/8", "::/128")),
    ("link-local address", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast address", _nets("224.0.0.0/4", "ff00::/8")),
    ("reserved address", _nets("240.0.0.0/4", "255.255.255.255/32", "fec0::/10")),
)

#: Loopback and private ranges (rule 6), denied only with ``deny_private``.
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = _nets(
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT, shared address space
    "fc00::/7",
)

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # IPv4-mapped
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (SIIT, RFC 2765)
_COMPATIBLE = ipaddress.ip_network("::/96")  # IPv4-compatible (deprecated, still routed by some stacks)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215)
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
#: Where RFC 6052 puts the IPv4 address for each NAT64 prefix length longer than /48: bit
#: offsets of its bytes (bits 64-71, the "u" octet, are skipped).
_RFC6052_LAYOUTS: dict[int, tuple[int, ...]] = {
    48: (48, 56, 72, 80),
    56: (56, 72, 80, 88),
    64: (72, 80, 88, 96),
    96: (96, 104, 112, 120),
}


def _bytes_at(value: int, offsets: tuple[int, ...]) -> ipaddress.IPv4Address:
    out = 0
    for bit in offsets:
        out = (out << 8) | ((value >> (120 - bit)) & 0xFF)
    return ipaddress.IPv4Address(out)


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """Every IPv4 address an IPv6 address may carry, by any transition mechanism a host or a
    router on the way could apply: IPv4-mapped, IPv4-translated, IPv4-compatible (``::a.b.c.d``,
    but not ``::`` and ``::1``), NAT64 (64:ff9b::/96, and each RFC 6052 layout of the local-use
    64:ff9b:1::/48, since the operator chooses the prefix length), 6to4 (2002::/16) and Teredo
    (its server and its de-obfuscated client). Empty for an IPv4 address or a plain IPv6 one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ()
    value = int(ip)
    found: list[ipaddress.IPv4Address] = []
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    elif ip in _COMPATIBLE and value > 1:
        found.append(ipaddress.IPv4Address(value))
    if ip in _LOCAL_NAT64:
        found.extend(_bytes_at(value, offsets) for offsets in _RFC6052_LAYOUTS.values())
    if ip in _SIX_TO_FOUR:
        found.append(ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))
    if ip in _TEREDO:
        found.append(ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF))  # server
        found.append(ipaddress.IPv4Address((value & 0xFFFFFFFF) ^ 0xFFFFFFFF))  # client
    return tuple(dict.fromkeys(found))


def readings(ip: IPAddress) -> tuple[IPAddress, ...]:
    """The address and every address it carries, recursively (a carried address is IPv4 today,
    but the recursion keeps the rule honest if a form ever wraps IPv6). A check denies the
    address when it denies any reading, so no wrapping hides a denied address."""
    out: list[IPAddress] = [ip]
    for inner in embedded_ipv4(ip):
        for reading in readings(inner):
            if reading not in out:
                out.append(reading)
    return tuple(out)


def unwrap_ip(ip: IPAddress) -> IPAddress:
    """The one IPv4 address an IPv4-mapped, -translated, -compatible or well-known NAT64 address
    carries, else the address itself: the canonical form for matching exact entries."""
    if isinstance(ip, ipaddress.IPv6Address) and (
        ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1)
    ):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
