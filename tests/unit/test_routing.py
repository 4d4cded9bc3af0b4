"""The routing policy (comfy_fleet.policies.routing): which endpoint takes a task, and the order tasks wait in."""

from __future__ import annotations

import random

from comfy_fleet.policies import routing
from comfy_fleet.policies.routing import EndpointLoad


def ep(name: str, **kw: object) -> EndpointLoad:
    kw.setdefault("connected", True)
    return EndpointLoad(name, **kw)  # type: ignore[arg-type]


def pick(endpoints: list[EndpointLoad], depth: int = 2, seed: int = 0, **kw: object) -> str | None:
    chosen = routing.pick_endpoint(endpoints, depth, random.Random(seed), **kw)  # type: ignore[arg-type]
    return chosen.name if chosen else None


# --- pick_endpoint ------------------------------------------------------------------------------


def test_load_is_the_larger_of_comfyui_queue_and_our_inflight() -> None:
    assert ep("a", queue_remaining=3, inflight=1).load == 3
    assert ep("a", queue_remaining=0, inflight=2).load == 2


def test_least_loaded_wins_whichever_count_is_larger() -> None:
    # b's own queue (other clients' prompts) is long though we sent it nothing.
    endpoints = [ep("a", inflight=1), ep("b", queue_remaining=3), ep("c", inflight=2)]
    assert pick(endpoints, depth=5) == "a"
    # ComfyUI's queue lags behind our dispatches: our inflight count makes a busier than c.
    endpoints = [ep("a", queue_remaining=0, inflight=3), ep("c", queue_remaining=1, inflight=1)]
    assert pick(endpoints, depth=5) == "c"


def test_depth_caps_each_endpoint() -> None:
    full = [ep("a", inflight=2), ep("b", queue_remaining=2), ep("c", queue_remaining=5, inflight=1)]
    assert pick(full, depth=2) is None
    assert pick([*full, ep("d", inflight=1)], depth=2) == "d"
    assert pick([ep("a", inflight=2)], depth=3) == "a"


def test_disconnected_and_draining_endpoints_are_skipped() -> None:
    endpoints = [ep("a", connected=False), ep("b", draining=True), ep("c", inflight=1)]
    assert pick(endpoints) == "c"
    assert pick([ep("a", connected=False), ep("b", draining=True)]) is None
    assert pick([]) is None


def test_labels_must_all_be_present() -> None:
    endpoints = [ep("cpu", labels=frozenset({"cpu"})), ep("gpu", labels=frozenset({"gpu", "big"}), inflight=1)]
    assert pick(endpoints, labels=["gpu"]) == "gpu"
    assert pick(endpoints, labels=["gpu", "big"]) == "gpu"
    assert pick(endpoints, labels=["gpu", "huge"]) is None
    assert pick(endpoints) == "cpu"  # no labels asked: least loaded


def test_workflows_filter_and_unknown_means_any() -> None:
    endpoints = [
        ep("a", workflows=frozenset({"solid"})),
        ep("b", workflows=frozenset({"solid", "text2img"}), inflight=1),
        ep("c", workflows=None, inflight=1),
    ]
    assert pick(endpoints, workflow="solid") == "a"
    assert pick(endpoints[:2], workflow="text2img") == "b"
    assert pick([endpoints[0]], workflow="text2img") is None
    assert pick([endpoints[0], endpoints[2]], workflow="text2img") == "c"


def test_ties_are_spread_over_many_draws() -> None:
    rng = random.Random(1234)
    endpoints = [ep("a", inflight=1), ep("b", queue_remaining=1), ep("c", inflight=2)]
    chosen = [routing.pick_endpoint(endpoints, 3, rng) for _ in range(200)]
    names = [c.name for c in chosen if c is not None]
    assert len(names) == 200
    assert set(names) == {"a", "b"}
    # Not a fixed order either: both appear often.
    assert min(names.count("a"), names.count("b")) > 50


# --- WaitQueue -------------------------------------------------------------------------------


def test_priority_first_then_oldest() -> None:
    q = routing.WaitQueue()
    q.push("old-low", 0, 1.0, "solid")
    q.push("new-high", 5, 3.0, "solid")
    q.push("old-high", 5, 2.0, "solid")
    q.push("negative", -1, 0.5, "solid")
    q.push("same-time-second", 0, 1.0, "solid")
    order = []
    while (item := q.pop_first(lambda _i: True)) is not None:
        order.append(item.task_id)
    assert order == ["old-high", "new-high", "old-low", "same-time-second", "negative"]
    assert len(q) == 0


def test_push_twice_is_one_entry() -> None:
    q = routing.WaitQueue()
    assert q.push("t", 0, 1.0, "solid")
    assert not q.push("t", 9, 0.0, "solid")
    assert len(q) == 1 and "t" in q


def test_remove_takes_a_task_out_for_good() -> None:
    q = routing.WaitQueue()
    for i in range(3):
        q.push(f"t{i}", 0, float(i), "solid", ["gpu"])
    assert q.remove("t0")
    assert not q.remove("t0")
    assert not q.remove("never-there")
    assert "t0" not in q and len(q) == 2
    assert sorted(q.task_ids()) == ["t1", "t2"]
    first = q.pop_first(lambda _i: True)
    assert first is not None and first.task_id == "t1" and first.labels == ("gpu",)
    # A removed task pushed again waits again (a requeue after a cancel was undone).
    assert q.push("t0", 0, 0.0, "solid")
    assert [q.pop_first(lambda _i: True).task_id for _ in range(2)] == ["t0", "t2"]  # type: ignore[union-attr]


def test_pop_first_skips_tasks_that_do_not_fit_without_dropping_them() -> None:
    q = routing.WaitQueue()
    q.push("big-1", 10, 1.0, "text2img")
    q.push("big-2", 10, 2.0, "text2img")
    q.push("small", 0, 3.0, "solid")
    item = q.pop_first(lambda i: i.workflow == "solid")
    assert item is not None and item.task_id == "small"
    assert len(q) == 2 and "big-1" in q and "big-2" in q
    assert q.pop_first(lambda i: i.workflow == "solid") is None
    assert len(q) == 2
    # Once they fit, they come out in their order.
    assert q.pop_first(lambda _i: True).task_id == "big-1"  # type: ignore[union-attr]
    assert q.pop_first(lambda _i: True).task_id == "big-2"  # type: ignore[union-attr]


def test_pop_first_passes_the_waiting_item_to_fits() -> None:
    q = routing.WaitQueue()
    q.push("t", 3, 1.5, "solid", ("gpu",))
    seen: list[routing.Waiting] = []
    q.pop_first(lambda i: seen.append(i) or False)
    assert [(w.task_id, w.workflow, w.labels, w.sort_key[:2]) for w in seen] == [
        ("t", "solid", ("gpu",), (-3, 1.5))
    ]
    assert "t" in q
