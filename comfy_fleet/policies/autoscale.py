"""When to ask Ray's autoscaler for GPU hosts and which endpoints to let go (pure: no Ray, no I/O).

One `step` per tick (about a second) turns what the router sees into a `Decision`:

- **Ask.** Tasks waiting beyond the room of the endpoints that take work (`unplaced`), for at
  least `window_s` without a break, make a request for `hosts + ceil(unplaced / per_host)`
  GPU hosts in all (`hosts`: endpoints taking work now), bounded by `min_hosts..max_hosts`.
  While the backlog lasts the request only grows: hosts being started do not count yet, and
  they add room as they connect, so the sum stays where it was instead of asking again.
  Once nothing is unplaced the request drops to 0: Ray's autoscaler keeps its `min_workers`
  and never removes a node that holds work.
- **Let go.** Ray removes a node only when nothing on it holds resources, and an endpoint
  actor holds a share of a CPU on its node (for its placement). So when no task has waited for
  `window_s`, the endpoints of discovered hosts with nothing in flight are *retired* beyond
  `min_hosts`: the router drains them (no new work; its actor stops once nothing is in flight
  there) and discovery skips them, which leaves the node idle for the autoscaler's idle
  timeout. A retired endpoint comes back at once when tasks are unplaced again; one whose host
  is still there `release_grace_s` after it was retired is a host the autoscaler keeps (its
  `min_workers`): it comes back and is *kept* (never retired again while its host lives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Config:
    max_hosts: int
    min_hosts: int = 0
    #: seconds a backlog (or its absence) must last before asking (or letting go)
    window_s: float = 10.0
    #: tasks one host takes at once (ENDPOINT_QUEUE_DEPTH)
    per_host: int = 2
    #: a retired endpoint whose host is still there after this long is kept (seconds)
    release_grace_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_hosts < 1 or not 0 <= self.min_hosts <= self.max_hosts:
            raise ValueError(f"need 0 <= min_hosts ({self.min_hosts}) <= max_hosts ({self.max_hosts}), max >= 1")
        if self.per_host < 1 or self.window_s < 0 or self.release_grace_s < 0:
            raise ValueError("per_host >= 1, window_s >= 0 and release_grace_s >= 0")


@dataclass(frozen=True)
class Endpoint:
    """What the router says of one endpoint (`Router.stats()["endpoints"][name]`)."""

    connected: bool = False
    draining: bool = False
    inflight: int = 0
    foreign: int = 0

    @property
    def load(self) -> int:
        return self.inflight + self.foreign


@dataclass(frozen=True)
class State:
    """What one step hands the next (start from `State()`)."""

    backlog_since: float | None = None
    quiet_since: float | None = None
    requested: int = 0
    #: endpoint → when it was retired
    retired: Mapping[str, float] = field(default_factory=dict)
    kept: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    #: GPU hosts to request in all (0: withdraw the request)
    request: int
    #: endpoints to drain and hide from discovery now
    retire: tuple[str, ...] = ()
    #: endpoints discovery may give back now
    restore: tuple[str, ...] = ()
    unplaced: int = 0
    room: int = 0


def room(endpoints: Mapping[str, Endpoint], per_host: int) -> int:
    """Free slots of the endpoints that take work (connected, not draining)."""
    return sum(
        max(0, per_host - e.load) for e in endpoints.values() if e.connected and not e.draining
    )


def step(
    state: State, config: Config, *, now: float, waiting: int,
    endpoints: Mapping[str, Endpoint], discovered: Set[str],
) -> tuple[State, Decision]:
    """One tick. `endpoints`: every endpoint the router routes to or drains; `discovered`: the
    endpoints of the GPU hosts the cluster has now (retired ones included): only those are
    ever retired, never configured or added ones."""
    free = room(endpoints, config.per_host)
    unplaced = max(0, waiting - free)
    # Hosts gone from the cluster are forgotten.
    retired = {n: at for n, at in state.retired.items() if n in discovered}
    kept = frozenset(n for n in state.kept if n in discovered)
    restore: list[str] = []
    retire: list[str] = []

    if unplaced > 0:
        backlog_since = state.backlog_since if state.backlog_since is not None else now
        quiet_since = None
        # Capacity we already have and let go of comes back first, without waiting.
        restore = sorted(retired)
        retired = {}
        requested = state.requested
        if now - backlog_since >= config.window_s:
            hosts = sum(1 for e in endpoints.values() if e.connected and not e.draining)
            wanted = hosts + math.ceil(unplaced / config.per_host)
            requested = max(requested, min(config.max_hosts, max(config.min_hosts, wanted)))
    else:
        backlog_since = None
        requested = 0
        quiet_since = (state.quiet_since if state.quiet_since is not None else now) if waiting == 0 else None
        # Retired long ago and still there: the autoscaler keeps that host.
        for name, at in sorted(retired.items()):
            if now - at >= config.release_grace_s:
                restore.append(name)
                kept |= {name}
                del retired[name]
        if quiet_since is not None and now - quiet_since >= config.window_s:
            retire = _surplus(config, endpoints, discovered, retired, kept)
            retired.update((n, now) for n in retire)

    new_state = replace(
        state, backlog_since=backlog_since, quiet_since=quiet_since, requested=requested,
        retired=retired, kept=kept,
    )
    return new_state, Decision(
        request=requested, retire=tuple(retire), restore=tuple(restore), unplaced=unplaced, room=free,
    )


def _surplus(
    config: Config, endpoints: Mapping[str, Endpoint], discovered: Set[str],
    retired: Mapping[str, float], kept: frozenset[str],
) -> list[str]:
    """Idle discovered endpoints to retire, leaving `min_hosts` hosts with an endpoint (kept
    ones count first)."""
    live = [n for n in discovered if n not in retired]
    idle = sorted(
        (n for n in live if n not in kept and n in endpoints
         and not endpoints[n].draining and endpoints[n].load == 0),
        reverse=True,
    )
    spare = max(0, len(live) - config.min_hosts)
    return idle[:spare]


def visible(found: Mapping[str, list[str]], state: State) -> dict[str, list[str]]:
    """What discovery may attach: the cluster's endpoints less the retired ones."""
    return {n: labels for n, labels in found.items() if n not in state.retired}
