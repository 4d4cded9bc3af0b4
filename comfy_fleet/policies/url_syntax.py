"""A URL's syntax: the first gate of the outgoing-URL policy (``url_policy``), pure, no network.

``parse`` accepts:
  * scheme ``http`` or ``https``; a host; a port in 1..65535; at most ``max_length`` characters;
  * no user info (``user:password@``): credentials have no place in a callback URL and would
    end up in logs and events;
  * no IPv6 zone id; a host name made of letters, digits, ``-``, ``_`` and ``.``;
  * a host whose last label is a number must be a canonical dotted-quad IPv4 address.
    ``2130706433``, ``0x7f.1``, ``127.1`` and ``017700000001`` all reach 127.0.0.1 through the
    C resolver; they are refused rather than second-guessed.

Which hosts and addresses may be called is ``url_policy``'s business, not this module's.
"""

from __future__ import annotations

import ipaddress
import functools
import re
from dataclasses import dataclass

import httpx

from comfy_fleet import errors
from comfy_fleet.policies import ip_ranges

#: The longest URL accepted, in characters.
MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


@dataclass(frozen=True)
class ParsedUrl:
    """A URL that passed ``parse`` (and, through ``UrlPolicy.check_url``, the policy)."""

    url: str
    scheme: str
    #: lower case, ASCII (IDNA), without brackets or a trailing dot
    host: str
    #: the effective port (80/443 when the URL names none)
    port: int
    #: the host as an address when the URL names one literally
    ip: ip_ranges.IPAddress | None
    #: path and query, for building requests
    target: str

    @property
    def redacted(self) -> str:
        """The URL without query and fragment: safe for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.target.split("?", 1)[0]
        return f"{self.scheme}://{host}:{self.port}{path}"


def parse(url: str, *, max_length: int = MAX_URL_LENGTH) -> ParsedUrl:
    """Check the URL's syntax (the rules of the module docstring) and take it apart.

    Raises ``errors.InvalidRequest`` for a malformed URL and ``errors.UrlForbidden`` for a form
    refused on principle (a scheme other than http(s), user info, a zone id, a non-canonical
    IPv4 host). Messages never repeat user info or the query string.
    """
    if not isinstance(url, str) or not url:
        raise errors.InvalidRequest("the URL is empty")
    return _parse(url, max_length)


# Pure and immutable: a callback URL is checked at each delivery (its address may change, and
# that check is not cached), its syntax once.
@functools.lru_cache(maxsize=1024)
def _parse(url: str, max_length: int) -> ParsedUrl:
    if len(url) > max_length:
        raise errors.InvalidRequest(f"the URL is longer than {max_length} characters")
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
    ip: ip_ranges.IPAddress | None
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
    return ParsedUrl(
        url=str(parsed.copy_with(fragment=None)),
        scheme=scheme,
        host=str(ip) if ip is not None else host,
        port=port,
        ip=ip,
        target=parsed.raw_path.decode("ascii", "replace"),
    )


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def url_redacted(url: str) -> str:
    """The URL without user info, query and fragment, for messages; never raises."""
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))[:200]
    except Exception:
        return "(malformed URL)"
