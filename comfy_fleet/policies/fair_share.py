"""FairShare: the tasks waiting in the router, and which tenant gets the next free slot (docs/api.md §7.1).

Within one tenant, tasks go by `priority` (higher first), then age (`created_at`), then task id,
as the router's single queue did. Among tenants, start-time fair queueing over dispatches:

- Each tenant has a virtual tag; there is one virtual time `V`, the start tag of the last dispatch.
- A tenant's next dispatch starts at `eff = max(tag, V)`; the free slot goes to the waiting tenant
  with the least `eff`, ties to the tenant served least recently (then by name).
- Dispatching tenant X at start `S = eff(X)` sets `tag(X) = S + 1/weight(X)` and `V = S`.

The `max(tag, V)` is what keeps idle time from being banked: a tenant that had nothing waiting
comes back level with the tenants being served now, never ahead by the dispatches it missed.
Every active tenant's tag lies in `[V, V + 1/weight]`, so the whole memory of the past is less
than one dispatch per tenant. With equal weights, while two tenants both have tasks waiting,
dispatches strictly alternate between them (the contract allows two in a row); at weights 3:1 they
go 3, 1, 3, 1 … (75 % / 25 %). Tags are exact: integers counting 1/L of a dispatch, L being the
least common multiple of the weights' numerators, so every 1/weight is a whole number of units;
ties are exact and the state is a deterministic function of the dispatches alone.

**Rebuild.** Arrivals and removals never change a tag; only dispatches do (`record_dispatch`, and
`next` which calls it). So `FairShare.rebuild(tenants of the task.dispatched facts in log order,
the waiting tasks)` yields the very state the live structure had after the same dispatches.
Replaying only a suffix of the dispatches can differ from the live state by less than one
dispatch per tenant (and in the order of ties among tenants not served within the suffix).

**Cost.** Tenants with waiting tasks sit in two heaps (those level with `V`, keyed by recency; those
ahead, keyed by tag), so choosing a tenant is O(log T) amortized; each tenant's tasks are a
RankedList, so push, remove and taking the first task are O(log n) plus a move of at most a block
(512 pointers), and a task's `position` costs O(T + log n). `next` tries `fits` on at most
SCAN_PER_TENANT of a tenant's first tasks, and with `alike` once per kind of task among its first
WALK_PER_TENANT: tasks no endpoint can take now wait without holding back the tenant's others.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from comfy_fleet.policies.ranked_list import RankedList

#: How many of one tenant's first tasks `next` tries against `fits` before passing to the next
#: tenant (the rest wait for a later round), as the router's queue did.
SCAN_PER_TENANT = 64
#: With `alike`, how many of one tenant's first tasks `next` may walk: a task alike to one that
#: did not fit is passed over untried and counts only here, so a pile of tasks no endpoint can
#: take (all naming a model file none holds) does not hold back the tenant's later tasks.
WALK_PER_TENANT = 4096

Weight = Fraction | int | float | str


@dataclass(frozen=True)
class WaitingTask:
    """A task waiting for a slot. `created_at` is its submission time (epoch seconds): a requeued
    task pushed again with it keeps its place by age."""

    task_id: str
    tenant: str
    priority: int = 0
    created_at: float = 0.0
    workflow: str | None = None
    labels: tuple[str, ...] = ()

    @property
    def sort_key(self) -> tuple[int, float, str]:
        return (-self.priority, self.created_at, self.task_id)


@dataclass(frozen=True)
class FairState:
    """What decides the order from now on, free of absolute virtual time: each tenant's lead
    over `V` (tenants level with it omitted), tenants in order of their last dispatch (least
    recent first), and each tenant's waiting task ids in their order."""

    lags: dict[str, Fraction]
    recency: tuple[str, ...]
    waiting: dict[str, tuple[str, ...]]


@dataclass
class _Tenant:
    name: str
    #: 1/weight, in units of 1/L
    step: int
    tag: int = 0
    #: index of its last dispatch (-1: none); ties go to the least recent.
    last_served: int = -1
    #: bumped whenever a heap entry of this tenant goes stale
    version: int = 0
    queue: RankedList[tuple[int, float, str]] = field(default_factory=RankedList)


def _fraction(weight: Weight) -> Fraction:
    value = Fraction(repr(weight)) if isinstance(weight, float) else Fraction(weight)
    if value <= 0:
        raise ValueError(f"a tenant weight must be > 0, not {weight!r}")
    return value


class FairShare:
    """The router's waiting tasks, by tenant, with a weighted fair share of dispatches."""

    def __init__(self, weights: Mapping[str, Weight] | None = None, default_weight: Weight = 1) -> None:
        self._weights = {name: _fraction(w) for name, w in (weights or {}).items()}
        self._default = _fraction(default_weight)
        #: units per dispatch: every 1/weight is a whole number of units
        self._unit = math.lcm(self._default.numerator, *(w.numerator for w in self._weights.values()))
        self._tenants: dict[str, _Tenant] = {}
        self._tasks: dict[str, WaitingTask] = {}
        #: tenants with at least one waiting task
        self._active: dict[str, _Tenant] = {}
        self._vtime = 0
        self._dispatches = 0
        #: active tenants level with V: (last_served, name, version)
        self._level: list[tuple[int, str, int]] = []
        #: active tenants ahead of V: (tag, last_served, name, version)
        self._ahead: list[tuple[int, int, str, int]] = []

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def rebuild(
        cls,
        dispatched: Iterable[str],
        waiting: Iterable[WaitingTask],
        weights: Mapping[str, Weight] | None = None,
        default_weight: Weight = 1,
    ) -> FairShare:
        """The state after the dispatches `dispatched` (each one's tenant, in log order) with
        `waiting` waiting: equal to the live structure that made those dispatches."""
        share = cls(weights, default_weight)
        for tenant in dispatched:
            share.record_dispatch(tenant)
        for task in waiting:
            share.push(task)
        return share

    def weight(self, tenant: str) -> Fraction:
        return self._weights.get(tenant, self._default)

    def _tenant(self, name: str) -> _Tenant:
        t = self._tenants.get(name)
        if t is None:
            step = self._unit / self.weight(name)
            assert step.denominator == 1
            t = self._tenants[name] = _Tenant(name, step.numerator)
        return t

    # --- the waiting tasks ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def get(self, task_id: str) -> WaitingTask | None:
        return self._tasks.get(task_id)

    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def waiting_count(self, tenant: str) -> int:
        """How many of `tenant`'s tasks wait (for TENANT_MAX_WAITING)."""
        t = self._active.get(tenant)
        return len(t.queue) if t is not None else 0

    def waiting_counts(self) -> dict[str, int]:
        return {name: len(t.queue) for name, t in self._active.items()}

    def push(self, task: WaitingTask) -> bool:
        """Queue a task (a new one, or one requeued: its age keeps its place). False when a task
        of this id already waits."""
        if task.task_id in self._tasks:
            return False
        self._tasks[task.task_id] = task
        t = self._tenant(task.tenant)
        t.queue.add(task.sort_key)
        if len(t.queue) == 1:
            self._active[t.name] = t
            self._enter(t)
        return True

    def remove(self, task_id: str) -> WaitingTask | None:
        """Take a task out (cancelled, dispatched by other means); None when it does not wait.
        Its tenant is not charged."""
        task = self._tasks.pop(task_id, None)
        if task is not None:
            self._take(self._tenants[task.tenant], task)
        return task

    def _take(self, t: _Tenant, task: WaitingTask) -> None:
        t.queue.remove(task.sort_key)
        if not t.queue:
            del self._active[t.name]
            t.version += 1  # its heap entry is stale

    # --- the share ----------------------------------------------------------------------------

    def _enter(self, t: _Tenant) -> None:
        """Put an active tenant into the heap matching its tag."""
        t.version += 1
        if t.tag <= self._vtime:
            heapq.heappush(self._level, (t.last_served, t.name, t.version))
        else:
            heapq.heappush(self._ahead, (t.tag, t.last_served, t.name, t.version))

    def record_dispatch(self, tenant: str) -> None:
        """Charge `tenant` one dispatch (what `next` does for the task it returns): used to replay
        the log, or for a dispatch the router learns of without having chosen it."""
        t = self._tenant(tenant)
        start = max(t.tag, self._vtime)
        t.tag = start + t.step
        self._vtime = start
        t.last_served = self._dispatches
        self._dispatches += 1
        if t.name in self._active:
            self._enter(t)  # its old entry goes stale (version bumped)
        else:
            t.version += 1

    def _candidates(self) -> Iterable[_Tenant]:
        """Active tenants in dispatch order (least `eff`, then least recently served), popped
        from the heaps as the caller consumes them; the caller re-enters those it passes over."""
        while True:
            # Tenants whose tag V has reached are level with it: they go by recency.
            while self._ahead and self._ahead[0][0] <= self._vtime:
                _, served, name, version = heapq.heappop(self._ahead)
                heapq.heappush(self._level, (served, name, version))
            if self._level:
                _, name, version = heapq.heappop(self._level)
            elif self._ahead:
                _, _, name, version = heapq.heappop(self._ahead)
            else:
                return
            t = self._tenants[name]
            if t.version == version and name in self._active:
                yield t

    def next(
        self, fits: Callable[[WaitingTask], bool] | None = None, *, scan: int = SCAN_PER_TENANT,
        alike: Callable[[WaitingTask], Hashable] | None = None,
    ) -> WaitingTask | None:
        """Take the next task to dispatch and charge its tenant: the tenant with the least
        weighted service lately, and within it the first task (by priority, then age) for which
        `fits(task)` holds, trying up to `scan` of each tenant's first tasks (a task no endpoint
        can take now is passed over, not dropped). None when nothing fits. With `alike`, `fits`
        is a function of `alike(task)`: a task alike to one that did not fit is not tried (nor
        counted in `scan`), within the tenant's first WALK_PER_TENANT tasks."""
        passed: list[_Tenant] = []
        chosen: WaitingTask | None = None
        for t in self._candidates():
            chosen = self._first_fitting(t, fits, scan, alike)
            if chosen is not None:
                break
            passed.append(t)
        for t in passed:
            self._enter(t)
        if chosen is None:
            return None
        t = self._tenants[chosen.tenant]
        del self._tasks[chosen.task_id]
        self._take(t, chosen)
        self.record_dispatch(t.name)
        return chosen

    def _first_fitting(
        self, t: _Tenant, fits: Callable[[WaitingTask], bool] | None, scan: int,
        alike: Callable[[WaitingTask], Hashable] | None,
    ) -> WaitingTask | None:
        unfit: set[Hashable] = set()
        tried = 0
        for n, key in enumerate(t.queue):
            if tried >= scan or n >= WALK_PER_TENANT:
                break
            task = self._tasks[key[2]]
            if fits is None:
                return task
            kind = alike(task) if alike is not None else None
            if kind is not None and kind in unfit:
                continue
            tried += 1
            if fits(task):
                return task
            if kind is not None:
                unfit.add(kind)
        return None

    # --- reading the order --------------------------------------------------------------------

    def position(self, task_id: str) -> int | None:
        """A waiting task's place in the dispatch order (1 = next), if every waiting task fits
        and nothing else arrives; None when it does not wait."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        x = self._tenants[task.tenant]
        rank = x.queue.index(task.sort_key)
        ahead = rank
        for y in self._active.values():
            if y is not x:
                ahead += self._dispatches_before(y, x, rank)
        return ahead + 1

    def _eff(self, t: _Tenant) -> int:
        return max(t.tag, self._vtime)

    def _dispatches_before(self, y: _Tenant, x: _Tenant, r: int) -> int:
        """How many of y's next dispatches come before x's dispatch number r (0-based). With no
        arrivals no tag is clamped again, so a tenant's k-th next dispatch starts at
        eff + k/weight; the order is (start, then who was served least recently), and the
        dispatch each was last served at is its previous one in this same order."""
        ey, ex = self._eff(y), self._eff(x)
        tx = ex + r * x.step
        n = len(y.queue)
        if tx < ey:
            return 0
        # y's dispatches j with ey + j/wy < tx, then the one starting exactly at tx, if any.
        whole, part = divmod(tx - ey, y.step)
        strict = min(n, whole + (part > 0))
        if strict < n and part == 0 and self._tie_first(y, strict, x, r):
            return strict + 1
        return strict

    @staticmethod
    def _tie_first(y: _Tenant, j: int, x: _Tenant, r: int) -> bool:
        """Does y's dispatch j go before x's dispatch r when both start at the same tag?"""
        past_y, past_x = (y.last_served, y.name), (x.last_served, x.name)
        if j == 0 or r == 0:
            # A previous dispatch in the past beats one in the future.
            return past_y < past_x if j == r else j == 0
        if y.step != x.step:
            return y.step > x.step  # its previous dispatch started earlier
        # Same step: the previous dispatches tie too, back to the one that reaches its first.
        return j < r if j != r else past_y < past_x

    def state(self) -> FairState:
        """The state that decides the order from now on (for comparing a rebuild with the
        live structure)."""
        lags = {
            name: Fraction(t.tag - self._vtime, self._unit)
            for name, t in self._tenants.items()
            if t.tag > self._vtime
        }
        served = sorted((t.last_served, name) for name, t in self._tenants.items() if t.last_served >= 0)
        waiting = {
            name: tuple(key[2] for key in t.queue) for name, t in sorted(self._active.items())
        }
        return FairState(lags, tuple(name for _, name in served), waiting)
