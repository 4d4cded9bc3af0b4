"""Is a local server up yet? One HTTP/1 GET, read three ways: it answers (any status, a 403
included), not yet (refused, reset, closed without a word), or the port is another program's
(an answer that is not HTTP/1, such as a gRPC server's HTTP/2 error quoting the request line)."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request


class NotHttp(Exception):
    """Something answers on the port, but not an HTTP/1 server."""


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when an HTTP/1 server answers `url`; False when nothing does yet; `NotHttp` when
    something else does."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except http.client.HTTPException as exc:  # before OSError: RemoteDisconnected is both
        if isinstance(exc, ConnectionError):
            return False
        raise NotHttp(repr(exc)) from None
    except OSError:
        return False
