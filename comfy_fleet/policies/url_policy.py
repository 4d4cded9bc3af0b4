"""Which outgoing URLs comfy-fleet may call: webhook callbacks and image inputs given by URL.

A URL passes two gates. ``UrlPolicy.check_url`` is pure syntax and literal addresses; it needs no
network. ``UrlPolicy.resolve_and_check`` resolves the host and checks every address it resolves to.
``PinnedTransport`` runs both again when it connects and connects to the address it checked, so a
name that resolves to a harmless address at the check and to 169.254.169.254 a moment later (DNS
rebinding) never reaches the second address. A client built without ``PinnedTransport`` only
gets the check at the moment it is called, and the rebinding window stays open: use
``policy.transport()`` (httpx), or ``PinnedResolver`` (aiohttp, the webhook sender), which
connects only to the addresses the caller checked.

Syntax (``check_url``), always, before anything else:
  * scheme ``http`` or ``https``; a host; a port in 1..65535; at most 2048 characters;
  * no user info (``user:password@``): credentials have no place in a callback URL and would
    end up in logs and events;
  * no IPv6 zone id; a host name made of letters, digits, ``-``, ``_`` and ``.``;
  * a host whose last label is a number must be a canonical dotted-quad IPv4 address.
    ``2130706433``, ``0x7f.1``, ``127.1`` and ``017700000001`` all reach 127.0.0.1 through the
    C resolver; they are refused rather than second-guessed.

Addresses, in this order of precedence (the first rule that matches decides):
  1. ``deny_hosts`` (host or host:port; names, IPv4 or IPv6): denied. Meant for the ComfyUI
     endpoints and the service itself. A name entry also matches the addresses it resolves to;
     an unspecified address entry (``0.0.0.0:8000``, ``[::]:8000``) matches loopback on that port.
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

IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::a.b.c.d``) IPv6 addresses are checked as the
IPv4 address they carry. A name is allowed only when every address it resolves to is allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from comfy_fleet import errors

# httpx logs every request with its whole URL at INFO; an image URL may carry a token in its
# query, so httpx's logger speaks only of trouble.
logging.getLogger("httpx").setLevel(logging.WARNING)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Resolves (host, port) to address strings; injectable so tests can play a DNS server.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: The longest URL accepted, in characters.
MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: Names of cloud metadata services; they resolve to denied addresses anyway, this is a second lock.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)


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
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class HostUnresolvable(errors.InputRejected):
    """The host name of the URL could not be resolved."""

    code = "host_unresolvable"


@dataclass(frozen=True)
class ParsedUrl:
    """A URL that passed ``UrlPolicy.check_url``."""

    url: str
    scheme: str
    #: lower case, ASCII (IDNA), without brackets or a trailing dot
    host: str
    #: the effective port (80/443 when the URL names none)
    port: int
    #: the host as an address when the URL names one literally
    ip: IPAddress | None
    #: path and query, for building requests
    target: str

    @property
    def redacted(self) -> str:
        """The URL without query and fragment: safe for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.target.split("?", 1)[0]
        return f"{self.scheme}://{host}:{self.port}{path}"


def unwrap_ip(ip: IPAddress) -> IPAddress:
    """The IPv4 address carried by an IPv4-mapped or NAT64 IPv6 address, else the address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _parse_host_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → (normalised host, port)."""
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
    #: DNS; the system resolver unless a test injects one
    resolver: Resolver | None = field(default=None, compare=False, repr=False)

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
    def from_settings(cls, settings: Any, *, extra_deny_hosts: Iterable[str] = ()) -> UrlPolicy:
        """The policy of a ``comfy_fleet.config.Settings``.

        Denies the ComfyUI endpoints and the service's own ``host:port``, plus the optional
        settings ``url_deny_hosts``, ``url_deny_cidrs``, ``url_allow_cidrs`` (sequences of strings)
        and ``url_deny_private`` (bool), read with defaults so that settings without them work.
        Stand-ins started at run time are not in the settings: pass them as ``extra_deny_hosts``.
        """
        own = [f"{_hostport(settings.service_host, settings.service_port)}"]
        endpoints = [e.name for e in getattr(settings, "comfyui_endpoints", ())]
        return cls.build(
            deny_hosts=[
                *own,
                *endpoints,
                *extra_deny_hosts,
                *getattr(settings, "url_deny_hosts", ()),
            ],
            deny_cidrs=getattr(settings, "url_deny_cidrs", ()),
            allow_cidrs=getattr(settings, "url_allow_cidrs", ()),
            deny_private=bool(getattr(settings, "url_deny_private", False)),
        )

    # -- syntax -------------------------------------------------------------------------------

    def check_url(self, url: str) -> ParsedUrl:
        """Check the URL's syntax and, when its host is an address, that address.

        Raises ``errors.InvalidRequest`` for a malformed URL and ``errors.UrlForbidden`` for one the
        policy refuses. Messages never repeat user info or the query string.
        """
        if not isinstance(url, str) or not url:
            raise errors.InvalidRequest("the URL is empty")
        if len(url) > self.max_url_length:
            raise errors.InvalidRequest(f"the URL is longer than {self.max_url_length} characters")
        if any(ord(c) < 0x21 or c == "\x7f" for c in url):
            raise errors.InvalidRequest("the URL contains spaces or control characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise errors.InvalidRequest("the URL is malformed") from None
        scheme = parsed.scheme
        if scheme not in ALLOWED_SCHEMES:
            raise errors.UrlForbidden(
                f"URL scheme {scheme or '(none)'!r} is not allowed; use http or https"
            )
        if parsed.userinfo:
            # Never echo it: it is exactly the part that may hold a password.
            raise errors.UrlForbidden("credentials in the URL (user:password@) are not allowed")
        raw_host = parsed.raw_host.decode("ascii", "replace").lower()
        if not raw_host:
            raise errors.InvalidRequest("the URL has no host")
        port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise errors.InvalidRequest(f"the URL's port {port} is out of range")
        if "%" in raw_host:
            raise errors.UrlForbidden("IPv6 zone identifiers are not allowed in URLs")
        host = raw_host[:-1] if raw_host.endswith(".") else raw_host
        ip: IPAddress | None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
            labels = host.split(".")
            if _NUMERIC_LABEL.match(labels[-1]):
                # The WHATWG URL standard and inet_aton read such hosts as IPv4 numbers in
                # decimal, octal or hex; ipaddress does not. Refuse the disagreement.
                raise errors.UrlForbidden(
                    f"host {host!r} is a non-canonical IPv4 address; write it as a.b.c.d"
                ) from None
            if not _HOST_NAME.match(host) or len(host) > 253:
                raise errors.InvalidRequest(f"host {host!r} is not a valid host name") from None
        target = parsed.raw_path.decode("ascii", "replace")
        result = ParsedUrl(
            url=str(parsed.copy_with(fragment=None)),
            scheme=scheme,
            host=str(ip) if ip is not None else host,
            port=port,
            ip=ip,
            target=target,
        )
        self._check_host_name(result)
        if ip is not None:
            self.check_address(ip, port, host=result.host)
        return result

    def _check_host_name(self, url: ParsedUrl) -> None:
        if url.ip is None and url.host in METADATA_HOSTS:
            raise errors.UrlForbidden(f"host {url.host!r} is a cloud metadata service")
        for host, port in self.deny_hosts:
            if host == url.host and port in (None, url.port):
                raise errors.UrlForbidden(f"host {_hostport(url.host, url.port)} is denied")

    # -- addresses ----------------------------------------------------------------------------

    def check_address(self, ip: IPAddress, port: int, *, host: str | None = None) -> None:
        """Raise ``errors.UrlForbidden`` unless ``ip:port`` is allowed (rules 1 and 3-7)."""
        shown = host if host and host != str(ip) else str(ip)
        where = f"{shown} ({ip})" if shown != str(ip) else shown
        plain = unwrap_ip(ip)
        for deny_host, deny_port in self.deny_hosts:
            if deny_port not in (None, port):
                continue
            try:
                deny_ip = unwrap_ip(ipaddress.ip_address(deny_host))
            except ValueError:
                continue  # a name; matched by name and by resolution in resolve_and_check
            if deny_ip == plain or (deny_ip.is_unspecified and plain.is_loopback):
                raise errors.UrlForbidden(f"{_hostport(where, port)} is denied")
        if _in_any(plain, self.deny_cidrs):
            raise errors.UrlForbidden(f"{where} is in a denied network")
        if _in_any(plain, self.allow_cidrs):
            return
        for reason, networks in DEFAULT_DENIED:
            if _in_any(plain, networks):
                raise errors.UrlForbidden(f"{where} is a {reason}")
        if self.deny_private and _in_any(plain, PRIVATE_NETWORKS):
            raise errors.UrlForbidden(f"{where} is a private or loopback address")

    async def resolve_and_check(self, url: str | ParsedUrl) -> list[IPAddress]:
        """Resolve the URL's host and check every address; return them, in resolver order.

        Raises ``errors.UrlForbidden`` if any address is denied, ``HostUnresolvable`` if the name
        does not resolve, and what ``check_url`` raises.
        """
        parsed = url if isinstance(url, ParsedUrl) else self.check_url(url)
        resolve = self.resolver or _system_resolver
        if parsed.ip is not None:
            await self._check_denied_names(parsed, [parsed.ip], resolve)
            return [parsed.ip]
        try:
            raw = await resolve(parsed.host, parsed.port)
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
        names = [h for h, p in self.deny_hosts if p in (None, url.port) and not _is_ip(h)]
        if not names:
            return
        wanted = {unwrap_ip(ip) for ip in ips}
        for name in names:
            try:
                denied = {
                    unwrap_ip(ipaddress.ip_address(a.split("%", 1)[0]))
                    for a in await resolve(name, url.port)
                }
            except (OSError, UnicodeError, ValueError):
                continue  # an entry that does not resolve denies nothing by address
            if wanted & denied:
                raise errors.UrlForbidden(
                    f"{_hostport(url.host, url.port)} is denied (it is {name})"
                )

    def transport(self, **kwargs: Any) -> PinnedTransport:
        """A transport enforcing this policy when it connects (kwargs: AsyncHTTPTransport)."""
        return PinnedTransport(self, httpx.AsyncHTTPTransport(**kwargs))


def _in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class PinnedTransport(httpx.AsyncBaseTransport):
    """Checks each request's URL against the policy and connects only to the address it checked.

    The request keeps its ``Host`` header and, for https, its TLS server name (so certificates are
    verified against the name, not the address); only the address to connect to is pinned.
    Raises ``errors.UrlForbidden`` / ``HostUnresolvable`` from ``handle_async_request``.
    """

    def __init__(self, policy: UrlPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        parsed = self._policy.check_url(str(request.url))
        ips = await self._policy.resolve_and_check(parsed)
        if parsed.ip is not None:
            return await self._inner.handle_async_request(request)
        original = request.url
        if parsed.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": parsed.host}
        last: httpx.ConnectError | None = None
        # Try each checked address in turn, as a resolver-following client would; a failed
        # connect has sent nothing, so moving on to the next address is safe.
        for ip in ips:
            request.url = original.copy_with(host=str(ip))
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError as exc:
                last = exc
            finally:
                request.url = original
        assert last is not None
        raise last

    async def aclose(self) -> None:
        await self._inner.aclose()


class PinnedResolver(AbstractResolver):
    """``PinnedTransport`` for aiohttp: a resolver answering with the addresses the caller just
    checked for the host (``pin``), so a connection goes only where the check went (no second
    lookup a rebinding DNS server could answer differently). A host not pinned is resolved and
    checked here. Host names and SNI stay the URL's."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._checked: dict[tuple[str, int], list[IPAddress]] = {}

    def pin(self, url: ParsedUrl, ips: list[IPAddress]) -> None:
        """Connect to ``url``'s host only at ``ips`` (from ``policy.resolve_and_check``)."""
        if url.ip is not None:
            return  # an address: aiohttp asks no resolver
        if len(self._checked) > 1024:
            self._checked.clear()  # bounded; a host no longer pinned is checked again
        self._checked[(url.host, url.port)] = ips

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ips = self._checked.get((host, port))
        if ips is None:
            # Not pinned by the caller: check now, never connect blind.
            shown = f"[{host}]" if ":" in host else host
            ips = await self._policy.resolve_and_check(f"http://{shown}:{port}/")
        return [
            ResolveResult(
                hostname=host, host=str(ip), port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
            for ip in ips
        ]

    async def close(self) -> None:
        return None


async def fetch_limited(
    client: httpx.AsyncClient,
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 3,
) -> tuple[bytes, str | None]:
    """GET ``url`` within bounds; return (body, content type).

    Redirects are followed by hand, each ``Location`` checked against the policy before it is
    requested. Raises ``errors.UrlForbidden`` (a URL or redirect the policy denies),
    ``errors.PayloadTooLarge`` (past ``max_bytes``), ``errors.InputRejected`` (timed out after
    ``timeout_s`` in total, a non-2xx status, too many redirects, a network error) and
    ``errors.InvalidRequest`` (a malformed URL). For protection against DNS rebinding ``client``
    should use ``policy.transport()``; a plain client is checked only just before each request.
    """
    parsed = policy.check_url(url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            for _hop in range(max_redirects + 1):
                await policy.resolve_and_check(parsed)
                async with client.stream(
                    "GET", parsed.url, follow_redirects=False, timeout=timeout_s
                ) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise errors.InputRejected(
                                f"{parsed.redacted} redirected without a Location"
                            )
                        parsed = policy.check_url(str(response.url.join(location)))
                        continue
                    if not 200 <= response.status_code < 300:
                        raise errors.InputRejected(
                            f"{parsed.redacted} answered HTTP {response.status_code}"
                        )
                    body = await _read_limited(response, max_bytes, parsed)
                    return body, response.headers.get("content-type")
    except httpx.InvalidURL:
        # httpx parses every redirect's Location, even one it does not follow.
        raise errors.UrlForbidden(f"{parsed.redacted} redirected to a malformed URL") from None
    except (TimeoutError, httpx.TimeoutException):
        elapsed = time.monotonic() - started
        raise errors.InputRejected(
            f"fetching {parsed.redacted} timed out after {elapsed:.1f} s (limit {timeout_s} s)"
        ) from None
    except httpx.HTTPError as exc:
        raise errors.InputRejected(
            f"fetching {parsed.redacted} failed: {type(exc).__name__}"
        ) from None
    raise errors.InputRejected(f"{url_redacted(url)}: more than {max_redirects} redirects")


async def _read_limited(response: httpx.Response, max_bytes: int, url: ParsedUrl) -> bytes:
    too_large = errors.PayloadTooLarge(f"{url.redacted} is larger than {max_bytes} bytes")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def url_redacted(url: str) -> str:
    """The URL without user info, query and fragment, for messages; never raises."""
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))[:200]
    except Exception:
        return "(malformed URL)"
