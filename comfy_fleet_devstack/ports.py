"""Free TCP ports on 127.0.0.1.

A port found free may be taken by someone else before our server binds it; callers that start a
server retry with fresh ports when that happens (the window is milliseconds).
"""

from __future__ import annotations

import random
import socket

#: Where paired ports are drawn from: below 55535 so that ``port + 10000`` is still a valid port.
_PAIRED_RANGE = (20000, 45000)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_paired_port(offset: int = 10000, exclude: set[int] | None = None) -> int:
    """A port ``p`` such that both ``p`` and ``p + offset`` are free on 127.0.0.1.

    SeaweedFS derives each component's gRPC port as its HTTP port + 10000 (and some of its
    clients assume so even when told otherwise), so both must be free.
    """
    taken = exclude or set()
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(*_PAIRED_RANGE)
        if {port, port + offset} & taken:
            continue
        if _bindable(port) and _bindable(port + offset):
            return port
    raise RuntimeError("no free pair of loopback ports found")
