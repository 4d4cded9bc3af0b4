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

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def unwrap_ip(ip: IPAddress) -> IPAddress:
    """The IPv4 address carried by an IPv4-mapped or NAT64 IPv6 address, else the address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
