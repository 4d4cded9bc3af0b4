"""Which outgoing URLs comfy-fleet may call: webhook callbacks and image inputs given by URL.

A URL passes two gates. ``UrlPolicy.check_url`` is pure syntax and literal addresses; it needs no
network. ``UrlPolicy.resolve_and_check`` resolves the host and checks every address it resolves to.
``comfy_fleet.net.pinned.PinnedTransport`` runs both again when it connects and connects to the
address it checked, so a name that resolves to a harmless address at the check and to
169.254.169.254 a moment later (DNS rebinding) never reaches the second address. A client built
without it only gets the check at the moment it is called, and the rebinding window stays open:
use ``policy.transport()`` (httpx), or ``pinned.PinnedResolver`` (aiohttp, the webhook sender),
which connects only to the addresses the caller checked. ``comfy_fleet.net.fetch`` GETs a URL
within the policy and size and time bounds.

Syntax (``check_url``), always, before anything else: ``url_syntax.parse`` (http or https, a
host, no user info, no zone id, canonical IPv4 only; its docstring has the rules).

Addresses, in this order of precedence (the first rule that matches decides):
  1. ``deny_hosts`` (host or host:port; names, IPv4 or IPv6): denied. Meant for the ComfyUI
     endpoints and the service itself. A name entry also matches the addresses it resolves to;
     an unspecified address entry (``0.0.0.0:8000``, ``[::]:8000``) matches loopback on that port.
  1b. the fleet (``fleet_addresses``): a ComfyUI endpoint's port on any address of its host, on
     loopback and on this machine's own addresses; the service's own ports likewise. It follows
     the endpoints discovered, added and removed while the service runs.
  2. the built-in metadata names (``metadata.google.internal``, ...): denied.
  3. ``deny_cidrs``: denied.
  4. ``allow_cidrs``: allowed. An operator's allow list overrides the built-in denies below, but
     never an explicit deny above.
  5. built-in denies: unspecified (0.0.0.0/8, ::), link-local (169.254.0.0/16, fe80::/10), cloud
     metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16,
     192.0.0.192), multicast, broadcast and reserved ranges.
  6. loopback and private ranges (127/8, ::1, 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7):
     denied only when ``deny_private`` is set; allowed by default (receivers on the same host or
     network are common, and our tests run them on 127.0.0.1).
  7. anything else: allowed.

An IPv6 address is checked as itself and as every IPv4 address it carries (IPv4-mapped,
-translated and -compatible, NAT64 and local NAT64, 6to4, Teredo: ``ip_ranges.readings``); it is
denied when any reading is. A name is allowed only when every address it resolves to is allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from comfy_fleet import errors
from comfy_fleet.policies import fleet_addresses, ip_ranges, url_syntax

if TYPE_CHECKING:
    from comfy_fleet.net import pinned

# httpx logs every request with its whole URL at INFO; an image URL may carry a token in its
# query, so httpx's logger speaks only of trouble.
logging.getLogger("httpx").setLevel(logging.WARNING)

IPAddress = ip_ranges.IPAddress
IPNetwork = ip_ranges.IPNetwork
#: Resolves (host, port) to address strings; injectable so tests can play a DNS server.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: Seconds one DNS lookup may take before the host counts as unresolvable: a resolver that
#: swallows queries must not hold a submission or a webhook delivery slot for ever.
RESOLVE_TIMEOUT_S = 5.0
#: The longest URL accepted, in characters.
MAX_URL_LENGTH = url_syntax.MAX_URL_LENGTH

#: Names of cloud metadata services; they resolve to denied addresses anyway, this is a second lock.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)


class HostUnresolvable(errors.InputRejected):
    """The host name of the URL could not be resolved."""

    code = "host_unresolvable"


ParsedUrl = url_syntax.ParsedUrl

_parse_host_entry = fleet_addresses.parse_host_entry


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """The outgoing-URL policy; see the module docstring for the rules and their precedence."""

    #: (host, port or None) pairs; build with ``UrlPolicy.build`` from strings
    deny_hosts: frozenset[tuple[str, int | None]] = frozenset()
    deny_cidrs: tuple[IPNetwork, ...] = ()
    allow_cidrs: tuple[IPNetwork, ...] = ()
    deny_private: bool = False
    max_url_length: int = MAX_URL_LENGTH
    #: bound on each DNS lookup, in seconds
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S
    #: DNS; the system resolver unless a test injects one
    resolver: Resolver | None = field(default=None, compare=False, repr=False)
    #: the fleet's current endpoints and the service's ports (rule 1b); kept up to date by
    #: ``comfy_fleet.net.fleet_refresher`` and read at each check
    fleet: fleet_addresses.FleetAddresses | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        deny_hosts: Iterable[str] = (),
        deny_cidrs: Iterable[str] = (),
        allow_cidrs: Iterable[str] = (),
        deny_private: bool = False,
        resolver: Resolver | None = None,
        names: tuple[str, str, str] = ("URL_DENY_HOSTS", "URL_DENY_CIDRS", "URL_ALLOW_CIDRS"),
    ) -> UrlPolicy:
        """A policy from the strings of the settings.

        A malformed entry raises ``errors.ConfigError`` naming the setting (``names`` gives the
        names of the three lists) and the entry.
        """
        hosts: set[tuple[str, int | None]] = set()
        for entry in deny_hosts:
            if not entry.strip():
                continue
            try:
                hosts.add(_parse_host_entry(entry))
            except ValueError:
                raise errors.ConfigError(
                    f"{names[0]}: {entry.strip()!r} is not a host or host:port"
                ) from None

        def networks(values: Iterable[str], name: str) -> tuple[IPNetwork, ...]:
            out = []
            for value in values:
                if not value.strip():
                    continue
                try:
                    out.append(ipaddress.ip_network(value.strip(), strict=False))
                except ValueError:
                    raise errors.ConfigError(
                        f"{name}: {value.strip()!r} is not a CIDR network"
                    ) from None
            return tuple(out)

        return cls(
            deny_hosts=frozenset(hosts),
            deny_cidrs=networks(deny_cidrs, names[1]),
            allow_cidrs=networks(allow_cidrs, names[2]),
            deny_private=deny_private,
            resolver=resolver,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        extra_deny_hosts: Iterable[str] = (),
        fleet: fleet_addresses.FleetAddresses | None = None,
    ) -> UrlPolicy:
        """The policy of a ``comfy_fleet.config.Settings``.

        Denies the ComfyUI endpoints and the service's own ``host:port`` (rule 1b, through
        ``fleet``: a new one holding them when none is given), plus the optional settings
        ``url_deny_hosts``, ``url_deny_cidrs``, ``url_allow_cidrs`` (sequences of strings) and
        ``url_deny_private`` (bool), read with defaults so that settings without them work.
        ``extra_deny_hosts`` are denied by exact host (rule 1).
        """
        if fleet is None:
            fleet = fleet_addresses.for_settings(settings)
        policy = cls.build(
            deny_hosts=[*extra_deny_hosts, *getattr(settings, "url_deny_hosts", ())],
            deny_cidrs=getattr(settings, "url_deny_cidrs", ()),
            allow_cidrs=getattr(settings, "url_allow_cidrs", ()),
            deny_private=bool(getattr(settings, "url_deny_private", False)),
        )
        return dataclasses.replace(policy, fleet=fleet)

    # -- syntax -------------------------------------------------------------------------------

    def check_url(self, url: str) -> ParsedUrl:
        """Check the URL's syntax (``url_syntax.parse``) and, when its host is an address, that
        address.

        Raises ``errors.InvalidRequest`` for a malformed URL and ``errors.UrlForbidden`` for one the
        policy refuses. Messages never repeat user info or the query string.
        """
        result = url_syntax.parse(url, max_length=self.max_url_length)
        self._check_host_name(result)
        if result.ip is not None:
            self.check_address(result.ip, result.port, host=result.host)
        return result

    def _check_host_name(self, url: ParsedUrl) -> None:
        if url.ip is None and url.host in METADATA_HOSTS:
            raise errors.UrlForbidden(f"host {url.host!r} is a cloud metadata service")
        for host, port in self.deny_hosts:
            if host == url.host and port in (None, url.port):
                raise errors.UrlForbidden(f"host {_hostport(url.host, url.port)} is denied")
        why = self.fleet.current.denies_name(url.host, url.port) if self.fleet else None
        if why is not None:
            raise errors.UrlForbidden(f"host {_hostport(url.host, url.port)} is {why}")

    # -- addresses ----------------------------------------------------------------------------

    def check_address(self, ip: IPAddress, port: int, *, host: str | None = None) -> None:
        """Raise ``errors.UrlForbidden`` unless ``ip:port`` is allowed (rules 1, 1b and 3-7),
        under each of its readings (``ip_ranges.readings``)."""
        shown = host if host and host != str(ip) else str(ip)
        where = f"{shown} ({ip})" if shown != str(ip) else shown
        why = self.fleet.current.denial(ip, port) if self.fleet is not None else None
        if why is not None:
            raise errors.UrlForbidden(f"{_hostport(where, port)} is {why}")
        for plain in ip_ranges.readings(ip):
            self._check_reading(plain, port, where)

    def _check_reading(self, plain: IPAddress, port: int, where: str) -> None:
        for deny_host, deny_port in self.deny_hosts:
            if deny_port not in (None, port):
                continue
            try:
                deny_ip = ip_ranges.unwrap_ip(ipaddress.ip_address(deny_host))
            except ValueError:
                continue  # a name; matched by name and by resolution in resolve_and_check
            if deny_ip == plain or (deny_ip.is_unspecified and plain.is_loopback):
                raise errors.UrlForbidden(f"{_hostport(where, port)} is denied")
        if ip_ranges.in_any(plain, self.deny_cidrs):
            raise errors.UrlForbidden(f"{where} is in a denied network")
        if ip_ranges.in_any(plain, self.allow_cidrs):
            return
        for reason, networks in ip_ranges.DEFAULT_DENIED:
            if ip_ranges.in_any(plain, networks):
                raise errors.UrlForbidden(f"{where} is a {reason}")
        if self.deny_private and ip_ranges.in_any(plain, ip_ranges.PRIVATE_NETWORKS):
            raise errors.UrlForbidden(f"{where} is a private or loopback address")

    async def resolve_and_check(self, url: str | ParsedUrl) -> list[IPAddress]:
        """Resolve the URL's host and check every address; return them, in resolver order.

        Raises ``errors.UrlForbidden`` if any address is denied, ``HostUnresolvable`` if the name
        does not resolve (or not within ``resolve_timeout_s``), and what ``check_url`` raises.
        """
        parsed = url if isinstance(url, ParsedUrl) else self.check_url(url)
        resolve = self.resolver or _system_resolver
        if parsed.ip is not None:
            await self._check_denied_names(parsed, [parsed.ip], resolve)
            return [parsed.ip]
        try:
            async with asyncio.timeout(self.resolve_timeout_s):
                raw = await resolve(parsed.host, parsed.port)
        except TimeoutError:
            raise HostUnresolvable(
                f"host {parsed.host!r} did not resolve within {self.resolve_timeout_s:g} s"
            ) from None
        except (OSError, UnicodeError):
            raise HostUnresolvable(f"host {parsed.host!r} could not be resolved") from None
        ips: list[IPAddress] = []
        for text in raw:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if ip not in ips:
                ips.append(ip)
        if not ips:
            raise HostUnresolvable(f"host {parsed.host!r} could not be resolved")
        for ip in ips:
            self.check_address(ip, parsed.port, host=parsed.host)
        await self._check_denied_names(parsed, ips, resolve)
        return ips

    async def _check_denied_names(
        self, url: ParsedUrl, ips: list[IPAddress], resolve: Resolver
    ) -> None:
        """Rule 1 for name entries: ``localhost:8188`` also denies ``127.0.0.1:8188``."""
        names = [h for h, p in self.deny_hosts if p in (None, url.port) and fleet_addresses.literal(h) is None]
        if not names:
            return
        wanted = {r for ip in ips for r in ip_ranges.readings(ip)}
        for name in names:
            try:
                async with asyncio.timeout(self.resolve_timeout_s):
                    answer = await resolve(name, url.port)
                denied = {
                    r for a in answer
                    for r in ip_ranges.readings(ipaddress.ip_address(a.split("%", 1)[0]))
                }
            except (OSError, UnicodeError, ValueError, TimeoutError):
                continue  # an entry that does not resolve denies nothing by address
            if wanted & denied:
                raise errors.UrlForbidden(
                    f"{_hostport(url.host, url.port)} is denied (it is {name})"
                )

    def transport(self, **kwargs: Any) -> pinned.PinnedTransport:
        """A transport enforcing this policy when it connects (kwargs: AsyncHTTPTransport)."""
        # Imported here: the transport module imports this one, and the pure policy needs no
        # transport until a caller asks for one.
        from comfy_fleet.net import pinned

        return pinned.PinnedTransport(self, httpx.AsyncHTTPTransport(**kwargs))


_hostport = url_syntax.hostport
url_redacted = url_syntax.url_redacted
