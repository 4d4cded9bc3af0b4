"""Runs Ray Serve's HAProxy with three changes Ray's own configuration offers no setting for.

Ray Serve writes HAProxy's configuration and starts `<RAY_SERVE_HAPROXY_BINARY_PATH> -db -f
<config> ...`; pointed at a script that runs this file, HAProxy starts with:

- its stats page (`listen stats`) and Prometheus exporter (`frontend prometheus`) bound to
  `--side-host` (loopback) instead of every interface;
- `timeout http-request` in `defaults` (a client gets that long to send its request headers,
  so slow clients cannot hold connections open), unless Ray already set one;
- SIGTERM when the Ray worker that started it dies, so no HAProxy outlives its Serve.

The configuration is rewritten in place (Ray recognises its HAProxy processes by the config
path on their command line), then HAProxy replaces this process. Standard library only: it
runs before anything of the project is importable.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import Sequence

#: Seconds a client has to send a complete request head (HAProxy's documented usual value).
HTTP_REQUEST_TIMEOUT_S = 10
#: The sections whose listeners serve operators, not clients.
SIDE_SECTIONS = ("listen stats", "frontend prometheus")
_BIND = re.compile(r"^(\s*)bind\s+(\S+)(.*)$")


def harden(
    config: str, side_host: str, http_request_timeout_s: int = HTTP_REQUEST_TIMEOUT_S
) -> str:
    """The HAProxy configuration `config` with the side sections bound to `side_host` and a
    `timeout http-request` in `defaults`. Idempotent."""
    has_timeout = re.search(r"^\s*timeout\s+http-request\b", config, re.M) is not None
    host = f"[{side_host}]" if ":" in side_host else side_host
    out: list[str] = []
    section = ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = " ".join(line.split())
            out.append(line)
            if section == "defaults" and not has_timeout:
                out.append(f"    timeout http-request {http_request_timeout_s}s")
            continue
        match = _BIND.match(line)
        if match and section in SIDE_SECTIONS:
            indent, address, rest = match.groups()
            port = address.rsplit(":", 1)[-1]
            line = f"{indent}bind {host}:{port}{rest}"
        out.append(line)
    return "\n".join(out) + "\n"


def _config_path(args: Sequence[str]) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[i + 1]
    return None


def _rewrite(path: str, side_host: str, http_request_timeout_s: int) -> None:
    """Harden the file at `path` under the lock Ray's HAProxy manager writes it with."""
    import fcntl

    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(path) as f:
            text = f.read()
        hardened = harden(text, side_host, http_request_timeout_s)
        if hardened != text:
            tmp = f"{path}.guard"
            with open(tmp, "w") as f:
                f.write(hardened)
            os.replace(tmp, path)


def _die_with_parent() -> None:
    """SIGTERM to this process (HAProxy after exec) when its parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--haproxy", required=True, help="the real HAProxy binary")
    parser.add_argument("--side-host", default="127.0.0.1")
    parser.add_argument("--http-request-timeout-s", type=int, default=HTTP_REQUEST_TIMEOUT_S)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then HAProxy's arguments")
    ns = parser.parse_args(argv)
    args = list(ns.args)
    if args and args[0] == "--":
        args = args[1:]
    path = _config_path(args)
    if path is not None and os.path.exists(path):
        _rewrite(path, ns.side_host, ns.http_request_timeout_s)
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        sys.exit(1)
    os.execv(ns.haproxy, [ns.haproxy, *args])


if __name__ == "__main__":
    main()
