"""The fleet's own addresses, which outgoing URLs (callbacks, image and model URLs) never reach.

A ComfyUI answers anyone who reaches it (a POST to its ``/interrupt`` stops whatever runs there),
and so does the service itself. So for every fleet endpoint ``host:port`` that port is denied

  * on every address the host resolves to,
  * on every loopback address (127.0.0.0/8, ::1) and on every address of this machine: a
    ComfyUI bound to 0.0.0.0 on this machine answers on all of them, and a URL naming any
    loopback form must reach nothing of the fleet;

and the service's own ports likewise, on loopback, this machine's addresses and the service
host's addresses. A check looks at every reading of an address (``ip_ranges.readings``), so
``[::ffff:127.0.0.2]``, ``[::127.0.0.1]``, ``[2002:7f00:1::]`` and ``[64:ff9b::7f00:1]`` are
loopback too.

``FleetSnapshot`` is immutable; ``FleetAddresses`` holds the current one and swaps it whole
(``replace``, ``add``, ``remove``), so a check running on another thread or between awaits
sees one consistent fleet. Resolving names and listing this machine's addresses is the
caller's (``comfy_fleet.net.fleet_refresher``); here they are injected, and nothing does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from comfy_fleet.policies import ip_ranges

IPAddress = ip_ranges.IPAddress
#: Resolves (host, port) to address strings (``url_policy.Resolver``).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, ``http://host:port/`` or a bare IPv6 address →
    (normalised host, port or None). Raises ``ValueError`` for anything else."""
    text = entry.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address
    host = host.rstrip(".")
    if not host or (port is not None and not 0 < port < 65536):
        raise ValueError(entry)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not _HOST_NAME.match(host):
            raise ValueError(entry) from None
    return host, port


def literal(host: str) -> IPAddress | None:
    """The host as an address, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_local(ip: IPAddress, own: frozenset[IPAddress]) -> bool:
    """Whether some reading of ``ip`` is loopback, unspecified or one of this machine's own."""
    return any(
        r in own or r.is_unspecified or ip_ranges.in_any(r, _LOOPBACK)
        for r in ip_ranges.readings(ip)
    )


@dataclass(frozen=True)
class FleetSnapshot:
    """The fleet at one moment; ``denial`` says whether an address and port belong to it."""

    #: (host, port) of each ComfyUI endpoint, hosts normalised (``parse_host_entry``)
    endpoints: frozenset[tuple[str, int]] = frozenset()
    #: the service's own (host, port) pairs (SERVICE_HOST:SERVICE_PORT and any other)
    service: frozenset[tuple[str, int]] = frozenset()
    #: what each host of ``endpoints`` and ``service`` resolved to (canonical readings)
    resolved: Mapping[str, frozenset[IPAddress]] = field(default_factory=dict)
    #: this machine's addresses (its interfaces)
    own: frozenset[IPAddress] = frozenset()

    @property
    def ports(self) -> frozenset[int]:
        """Every port of the fleet and the service: denied on every local address."""
        return frozenset(p for _, p in self.endpoints | self.service)

    def names(self) -> frozenset[str]:
        """The hosts that are names (to resolve), not addresses."""
        return frozenset(h for h, _ in self.endpoints | self.service if literal(h) is None)

    def denial(self, ip: IPAddress, port: int, *, service_only: bool = False) -> str | None:
        """Why ``ip:port`` is part of the fleet or the service ("a ComfyUI endpoint of the
        fleet (127.0.0.1:8188)"), or None when it is not. ``service_only``: the service's own
        ports only (a ComfyUI being added may well be on loopback)."""
        if port not in self.ports:
            return None
        readings = set(ip_ranges.readings(ip))
        local = is_local(ip, self.own)
        kinds = [("this service", self.service)]
        if not service_only:
            kinds.insert(0, ("a ComfyUI endpoint of the fleet", self.endpoints))
        for kind, pairs in kinds:
            for host, p in sorted(pairs):
                if p == port and (local or readings & self._addresses(host)):
                    return f"{kind} ({_hostport(host, p)})"
        return None

    def denies_name(self, host: str, port: int) -> str | None:
        """The same for a URL's host name before resolution (``comfy-1.internal:8188``)."""
        for kind, pairs in (("a ComfyUI endpoint of the fleet", self.endpoints),
                            ("this service", self.service)):
            if (host, port) in pairs:
                return f"{kind} ({_hostport(host, port)})"
        return None

    def _addresses(self, host: str) -> frozenset[IPAddress]:
        ip = literal(host)
        if ip is not None:
            return frozenset(ip_ranges.readings(ip))
        return self.resolved.get(host, frozenset())


def endpoint_refusal(ip: IPAddress, port: int, fleet: FleetSnapshot) -> str | None:
    """Why a ComfyUI endpoint at ``ip:port`` must not be added, or None. Loopback and private
    addresses are fine (ComfyUIs on this machine or network are the usual case); link-local,
    metadata, unspecified, multicast and reserved addresses (in any reading) and the service's
    own ports are not."""
    for reading in ip_ranges.readings(ip):
        for reason, networks in ip_ranges.DEFAULT_DENIED:
            if ip_ranges.in_any(reading, networks):
                return f"{ip} is a {reason}"
    why = fleet.denial(ip, port, service_only=True)
    return None if why is None else f"{_hostport(str(ip), port)} is {why}"


def snapshot(
    endpoints: Iterable[str],
    *,
    service: Iterable[str] = (),
    resolved: Mapping[str, Iterable[str | IPAddress]] | None = None,
    own: Iterable[str | IPAddress] = (),
) -> FleetSnapshot:
    """A snapshot from strings: ``endpoints`` and ``service`` as ``host:port`` (an entry without
    a port, or malformed, raises ``ValueError``), ``resolved`` host → addresses, ``own`` the
    machine's addresses."""
    return FleetSnapshot(
        endpoints=_pairs(endpoints),
        service=_pairs(service),
        resolved={h: _addresses(a) for h, a in (resolved or {}).items()},
        own=_addresses(own),
    )


def for_settings(settings: Any) -> FleetAddresses:
    """A fleet holding a ``comfy_fleet.config.Settings``' ComfyUI endpoints (always, whatever a
    refresh says) and the service's own ``SERVICE_HOST:SERVICE_PORT``; names resolve at the
    first ``resolve``."""
    fleet = FleetAddresses(static=[e.name for e in getattr(settings, "comfyui_endpoints", ())])
    fleet.set_service([_hostport(settings.service_host, settings.service_port)])
    return fleet


class FleetAddresses:
    """The current ``FleetSnapshot``, replaced whole on each change.

    Reading (``current``) is one attribute load; writers build a new snapshot and assign it, so
    no lock is needed for asyncio tasks or threads reading alongside one writer. ``replace``,
    ``add`` and ``remove`` take endpoint entries (``host:port``); addresses already resolved for
    a host are kept until ``resolve`` answers again, so a failing DNS never lifts a denial.
    """

    def __init__(self, initial: FleetSnapshot | None = None, *, static: Iterable[str] = ()) -> None:
        #: endpoints always in the fleet whatever a refresh says (the configured ones)
        self._static = _pairs(static)
        self._snap = initial or FleetSnapshot()
        if self._static:
            self._snap = replace(self._snap, endpoints=self._snap.endpoints | self._static)

    @property
    def current(self) -> FleetSnapshot:
        return self._snap

    def replace(self, endpoints: Iterable[str]) -> FleetSnapshot:
        """The fleet is now exactly ``endpoints`` (plus the static ones); returns the snapshot."""
        return self._swap(endpoints=_pairs(endpoints) | self._static)

    def add(self, endpoint: str) -> FleetSnapshot:
        return self._swap(endpoints=self._snap.endpoints | _pairs([endpoint]))

    def remove(self, endpoint: str) -> FleetSnapshot:
        return self._swap(endpoints=(self._snap.endpoints - _pairs([endpoint])) | self._static)

    def set_own(self, own: Iterable[str | IPAddress]) -> FleetSnapshot:
        """This machine's addresses are now ``own``."""
        return self._swap(own=_addresses(own))

    def set_service(self, service: Iterable[str]) -> FleetSnapshot:
        return self._swap(service=_pairs(service))

    async def resolve(self, resolver: Resolver) -> FleetSnapshot:
        """Resolve every host name of the fleet with ``resolver`` and record the answers. A name
        that fails keeps what it resolved to before (never less denied); names no longer in the
        fleet are forgotten."""
        names = self._snap.names()
        found: dict[str, frozenset[IPAddress]] = {}
        for name in sorted(names):
            try:
                found[name] = _addresses(await resolver(name, 0))
            except Exception:  # noqa: BLE001 - any failure: keep the previous answer
                continue
        snap = self._snap  # what a concurrent writer left, merged with the answers
        resolved = {h: a for h, a in snap.resolved.items() if h in snap.names()}
        for name, addresses in found.items():
            if addresses:  # an empty answer lifts nothing either
                resolved[name] = addresses
        return self._swap(resolved=resolved)

    def _swap(self, **changes: object) -> FleetSnapshot:
        self._snap = replace(self._snap, **changes)  # type: ignore[arg-type]
        return self._snap


def _pairs(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    out = set()
    for entry in entries:
        host, port = parse_host_entry(entry)
        if port is None:
            raise ValueError(f"{entry!r} has no port")
        out.add((host, port))
    return frozenset(out)


def _addresses(values: Iterable[str | IPAddress]) -> frozenset[IPAddress]:
    out: set[IPAddress] = set()
    for value in values:
        ip = value if not isinstance(value, str) else ipaddress.ip_address(value.split("%", 1)[0])
        out.update(ip_ranges.readings(ip))
    return frozenset(out)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
