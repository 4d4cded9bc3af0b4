"""The Python heap of a long-lived service process (an actor, an ingress replica): what its
garbage collector scans.

A Ray worker holds a few hundred thousand objects from its start alone (Ray, FastAPI, pydantic,
botocore, our modules) that live as long as the process. CPython's collector walks all of them at
every full collection. The short-lived containers of requests bring a young collection every
request or two under load, and a full one every few hundred. Measured under load (the
collector's own CPU time, per thread): an ingress replica spent 13-16 % of its CPU in the
collector with CPython's default thresholds, 0.3-6 % with these. `settle()` after start moves
what exists then out of the collector's reach (`gc.freeze()`; Ray Serve also does this for its
replicas) and lets young collections come less often: reference counting frees nearly
everything a request makes, and the collector is only for cycles, so most young collections
found nothing to free. The one full collection it makes blocks its event loop once, at start.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) of tracked objects between two young collections; CPython's
#: default is 700, sized for small heaps. The older generations keep CPython's ratios.
YOUNG_THRESHOLD = 20_000

_settled = False


def settle() -> None:
    """Once per process, after its start: collect once, freeze what survives (never scanned
    again, never freed: it lives for good anyway), and space young collections out. Later calls
    do nothing, so objects made while serving are never frozen."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
