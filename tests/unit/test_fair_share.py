"""The fair share among tenants (comfy_fleet.policies.fair_share) and its RankedList.

The property tests draw many random histories from seeded generators (no extra dependency), so
any failure names the seed that reproduces it.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction

import pytest

from comfy_fleet.policies import fair_share, ranked_list
from comfy_fleet.policies.fair_share import FairShare, WaitingTask

_ids = itertools.count()


def task(tenant: str, priority: int = 0, created_at: float | None = None, **kw: object) -> WaitingTask:
    n = next(_ids)
    return WaitingTask(
        f"{tenant}-{n:06d}", tenant, priority, float(n) if created_at is None else created_at, **kw  # type: ignore[arg-type]
    )


def flood(share: FairShare, tenant: str, n: int) -> list[WaitingTask]:
    tasks = [task(tenant) for _ in range(n)]
    for t in tasks:
        share.push(t)
    return tasks


def drain(share: FairShare, n: int | None = None) -> list[WaitingTask]:
    out = []
    while (n is None or len(out) < n) and (t := share.next()) is not None:
        out.append(t)
    return out


def clone(share: FairShare, dispatched: list[str]) -> FairShare:
    waiting = [share.get(tid) for tid in share.task_ids()]
    return FairShare.rebuild(dispatched, [w for w in waiting if w], share._weights, share._default)


# --- RankedList ---------------------------------------------------------------------------------


def test_ranked_list_agrees_with_a_sorted_list() -> None:
    rng = random.Random(1)
    ranked: ranked_list.RankedList[int] = ranked_list.RankedList()
    model: list[int] = []
    for _ in range(6000):
        if model and rng.random() < 0.4:
            item = rng.choice(model) if rng.random() < 0.9 else -1
            assert ranked.remove(item) == (item in model)
            if item in model:
                model.remove(item)
        else:
            item = rng.randrange(100_000)
            if item not in model:
                ranked.add(item)
                model.append(item)
                model.sort()
        assert len(ranked) == len(model)
    assert list(ranked) == model
    assert all(ranked.index(v) == i for i, v in enumerate(model))
    assert ranked.first() == model[0] and model[0] in ranked and -5 not in ranked
    with pytest.raises(ValueError):
        ranked.index(-5)
    assert len(ranked._blocks) > 2  # the test crossed block splits


# --- within one tenant ----------------------------------------------------------------------------


def test_within_a_tenant_priority_then_age_then_id() -> None:
    share = FairShare()
    old_low = WaitingTask("c", "acme", 0, 1.0)
    new_high = WaitingTask("d", "acme", 5, 9.0)
    old_high = WaitingTask("e", "acme", 5, 2.0)
    same_time = WaitingTask("b", "acme", 5, 2.0)
    for t in (old_low, new_high, old_high, same_time):
        assert share.push(t)
    assert not share.push(old_low)
    assert [t.task_id for t in drain(share)] == ["b", "e", "d", "c"]


def test_priority_only_orders_within_a_tenant() -> None:
    share = FairShare()
    flood(share, "acme", 6)
    for _ in range(6):
        share.push(task("beta", priority=100))
    order = [t.tenant for t in drain(share)]
    assert order == ["acme", "beta"] * 6 or order == ["beta", "acme"] * 6


def test_requeue_keeps_the_place_by_age() -> None:
    share = FairShare()
    a1, a2, a3 = flood(share, "acme", 3)
    assert share.next() == a1
    share.push(a1)  # the attempt was lost: back to waiting, with its own age
    assert [t.task_id for t in drain(share)] == [a1.task_id, a2.task_id, a3.task_id]


def test_remove_and_counts() -> None:
    share = FairShare()
    a = flood(share, "acme", 3)
    flood(share, "beta", 1)
    assert share.waiting_counts() == {"acme": 3, "beta": 1} and len(share) == 4
    assert share.remove(a[1].task_id) == a[1] and share.remove(a[1].task_id) is None
    assert share.waiting_count("acme") == 2 and share.waiting_count("nobody") == 0
    assert a[1].task_id not in share and a[0].task_id in share
    for t in a:
        share.remove(t.task_id)
    assert share.waiting_counts() == {"beta": 1}
    assert [t.tenant for t in drain(share)] == ["beta"]


def test_fits_passes_over_tasks_and_tenants_without_dropping_them() -> None:
    share = FairShare()
    a = flood(share, "acme", 2)
    b = flood(share, "beta", 2)
    only_b = share.next(lambda t: t.tenant == "beta")
    assert only_b == b[0]
    # acme was passed over, not charged: it goes next, and nothing was lost.
    assert share.next() == a[0]
    assert share.next(lambda t: False) is None
    assert sorted(t.task_id for t in drain(share)) == sorted([a[1].task_id, b[1].task_id])


def test_fits_scans_a_bounded_prefix_of_a_tenant() -> None:
    share = FairShare()
    a = flood(share, "acme", 10)
    assert share.next(lambda t: t == a[9], scan=5) is None
    assert share.next(lambda t: t == a[9], scan=10) == a[9]


def test_tasks_alike_to_one_that_did_not_fit_are_passed_over_untried() -> None:
    """A pile of tasks naming a model file no endpoint holds does not hold back the tenant's
    later tasks: `fits` is tried once per kind of task, within WALK_PER_TENANT tasks."""
    missing = ("file:loras/none",)
    share = FairShare()
    stuck = [task("acme", labels=missing) for _ in range(200)]
    later = task("acme")
    for t in [*stuck, later]:
        share.push(t)
    tried: list[WaitingTask] = []

    def fits(t: WaitingTask) -> bool:
        tried.append(t)
        return not t.labels

    def alike(t: WaitingTask) -> object:
        return (t.workflow, t.labels)

    assert share.next(fits) is None  # without `alike`: 64 tries, all of the pile
    assert len(tried) == fair_share.SCAN_PER_TENANT
    tried.clear()
    assert share.next(fits, alike=alike) == later
    assert tried == [stuck[0], later] and len(share) == 200
    walked = FairShare()
    for t in [*(task("acme", labels=missing) for _ in range(fair_share.WALK_PER_TENANT)),
              task("acme")]:
        walked.push(t)
    assert walked.next(fits, alike=alike) is None  # beyond the walk's bound: a later round

def dispatch_runs(seed: int, weights: dict[str, int]) -> tuple[list[str], list[str]]:
    """A random history of arrivals, cancels and dispatches among tenants; returns the tenants
    dispatched, and for each dispatch made while 'a' and 'b' both had work, its tenant."""
    rng = random.Random(seed)
    share = FairShare(weights)
    tenants = list(weights) + ["c"]
    dispatched: list[str] = []
    both: list[str] = []
    for _ in range(600):
        roll = rng.random()
        if roll < 0.45:
            for _ in range(rng.randint(1, 4)):
                share.push(task(rng.choice(tenants), priority=rng.randint(0, 3)))
        elif roll < 0.5 and len(share):
            share.remove(rng.choice(share.task_ids()))
        else:
            both_waiting = share.waiting_count("a") > 0 and share.waiting_count("b") > 0
            got = share.next()
            if got is None:
                continue
            dispatched.append(got.tenant)
            if both_waiting:
                both.append(got.tenant)
            elif both and both[-1] != "|":
                both.append("|")  # a gap: runs do not span it
    return dispatched, both


@pytest.mark.parametrize("seed", range(60))
def test_equal_weights_never_more_than_two_in_a_row_while_both_wait(seed: int) -> None:
    _, both = dispatch_runs(seed, {"a": 1, "b": 1})
    runs = [len(list(g)) for k, g in itertools.groupby(both) if k in ("a", "b")]
    assert max(runs, default=0) <= 2, f"seed {seed}"


def test_equal_weights_alternate_after_a_flood() -> None:
    share = FairShare()
    flood(share, "a", 500)
    drain(share, 200)  # a alone for a while: nothing banked by b's idleness either
    flood(share, "b", 50)
    order = [t.tenant for t in drain(share, 100)]
    assert order == ["b", "a"] * 50


@pytest.mark.parametrize(("weights", "b_share"), [({"a": 1, "b": 1}, 0.5), ({"a": 3, "b": 1}, 0.25)])
@pytest.mark.parametrize("seed", range(10))
def test_shares_over_windows_while_both_wait(weights: dict[str, int], b_share: float, seed: int) -> None:
    rng = random.Random(seed)
    share = FairShare(weights)
    flood(share, "a", 3000)
    drain(share, rng.randint(0, 50))
    order: list[str] = []
    for _ in range(40):
        flood(share, "b", rng.randint(5, 30))
        for _ in range(rng.randint(10, 60)):
            both_waiting = share.waiting_count("b") > 0
            got = share.next()
            if both_waiting and got is not None:
                order.append(got.tenant)
    assert len(order) > 500
    for start in range(0, len(order) - 100, 50):
        window = order[start : start + 100]
        assert abs(window.count("b") / 100 - b_share) <= 0.05, f"seed {seed} window {start}"


def test_weights_three_to_one_go_in_fours() -> None:
    share = FairShare({"a": 3})
    flood(share, "a", 300)
    flood(share, "b", 100)
    order = "".join(t.tenant for t in drain(share, 400))
    counts = Counter(order[i : i + 4].count("b") for i in range(0, 400, 4))
    assert counts == {1: 100}


def test_fractional_and_three_tenant_weights() -> None:
    share = FairShare({"a": "0.5", "b": 1.5, "c": 1})
    for name in "abc":
        flood(share, name, 600)
    got = Counter(t.tenant for t in drain(share, 900))
    assert got == {"a": 150, "b": 450, "c": 300}


def test_a_tenant_served_lately_does_not_get_ahead_again_by_leaving() -> None:
    """Its lead is kept while it is away, up to one dispatch: coming back, it waits its turn."""
    share = FairShare()
    (a,) = flood(share, "a", 1)
    flood(share, "b", 20)
    assert share.next() == a  # a tie between newcomers goes by name
    share.push(task("a"))
    nxt = share.next()
    assert nxt is not None and nxt.tenant == "b"


# --- rebuild ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_rebuild_from_the_dispatches_equals_the_live_state(seed: int) -> None:
    rng = random.Random(seed)
    weights = {"a": rng.choice([1, 2, 3]), "b": 1, "c": Fraction(1, 2)}
    live = FairShare(weights)
    dispatched: list[str] = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.4:
            live.push(task(rng.choice("abcd"), priority=rng.randint(0, 2)))
        elif roll < 0.47 and len(live):
            live.remove(rng.choice(live.task_ids()))
        elif roll < 0.5:
            name = rng.choice("abcd")
            live.record_dispatch(name)  # a dispatch decided elsewhere
            dispatched.append(name)
        else:
            fits = None if rng.random() < 0.7 else (lambda t: t.priority > 0)
            got = live.next(fits)
            if got is not None:
                dispatched.append(got.tenant)
                if rng.random() < 0.1:
                    live.push(got)  # requeued
    rebuilt = clone(live, dispatched)
    assert rebuilt.state() == live.state(), f"seed {seed}"
    for tid in live.task_ids():
        assert rebuilt.position(tid) == live.position(tid)
    # And they decide the same from now on, arrivals included.
    for _ in range(100):
        t = task(rng.choice("abcd"))
        live.push(t)
        rebuilt.push(t)
        for _ in range(2):
            assert live.next() == rebuilt.next(), f"seed {seed}"


def test_record_dispatch_matches_next() -> None:
    live = FairShare({"a": 2})
    flood(live, "a", 10)
    flood(live, "b", 10)
    order = [t.tenant for t in drain(live, 9)]
    rebuilt = clone(live, order)
    assert rebuilt.state() == live.state()
    assert [t.task_id for t in drain(rebuilt)] == [t.task_id for t in drain(live)]


def test_state_is_free_of_absolute_virtual_time() -> None:
    share = FairShare()
    flood(share, "a", 10)
    drain(share, 5)
    state = share.state()
    assert state.lags == {"a": 1}
    assert state.recency == ("a",)
    assert len(state.waiting["a"]) == 5


# --- positions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_position_is_the_actual_dispatch_order(seed: int) -> None:
    rng = random.Random(seed)
    weights = {"a": rng.choice([1, 2, 3]), "b": 1, "c": Fraction(2, 3), "d": 2}
    share = FairShare(weights)
    dispatched: list[str] = []
    for _ in range(300):
        if rng.random() < 0.6:
            share.push(task(rng.choice("abcde"), priority=rng.randint(0, 2)))
        elif (got := share.next()) is not None:
            dispatched.append(got.tenant)
    expected = {tid: share.position(tid) for tid in share.task_ids()}
    actual = [t.task_id for t in drain(clone(share, dispatched))]
    assert sorted(expected.values()) == list(range(1, len(actual) + 1))
    assert {tid: i + 1 for i, tid in enumerate(actual)} == expected, f"seed {seed}"


def test_position_of_a_task_not_waiting_is_none() -> None:
    share = FairShare()
    (a,) = flood(share, "a", 1)
    assert share.position(a.task_id) == 1
    share.next()
    assert share.position(a.task_id) is None


def test_weights_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairShare({"a": 0})
    assert FairShare({"a": 0.1}).weight("a") == Fraction(1, 10)
    assert FairShare(default_weight=2).weight("zzz") == 2
    assert fair_share.SCAN_PER_TENANT == 64
