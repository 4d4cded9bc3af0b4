"""comfy_fleet.policies.autoscale: when to ask for GPU hosts, which endpoints to let go."""

from __future__ import annotations

import pytest

from comfy_fleet.policies import autoscale
from comfy_fleet.policies.autoscale import Config, Endpoint, State

CFG = Config(max_hosts=4, min_hosts=0, window_s=5.0, per_host=2, release_grace_s=60.0)
FULL = Endpoint(connected=True, inflight=2)
IDLE = Endpoint(connected=True)


def run(state: State, t: float, waiting: int, eps: dict[str, Endpoint], disc: set[str] | None = None,
        cfg: Config = CFG) -> tuple[State, autoscale.Decision]:
    return autoscale.step(state, cfg, now=t, waiting=waiting, endpoints=eps,
                          discovered=set(eps) if disc is None else disc)


def test_room_counts_free_slots_of_endpoints_taking_work_only() -> None:
    eps = {
        "a": Endpoint(connected=True, inflight=1),
        "b": Endpoint(connected=True, foreign=3),
        "c": Endpoint(connected=False),
        "d": Endpoint(connected=True, draining=True),
    }
    assert autoscale.room(eps, 2) == 1


def test_a_backlog_asks_only_after_the_window_without_a_break() -> None:
    eps = {"a": FULL}
    s, d = run(State(), 0.0, 10, eps)
    assert d.request == 0 and d.unplaced == 10
    s, d = run(s, 4.9, 10, eps)
    assert d.request == 0
    s, d = run(s, 5.0, 10, eps)
    # 1 host taking work + ceil(10 / 2) more, bounded by max_hosts
    assert d.request == 4


def test_a_break_in_the_backlog_restarts_the_window() -> None:
    eps = {"a": FULL}
    s, _ = run(State(), 0.0, 3, eps)
    s, d = run(s, 3.0, 0, {"a": IDLE})
    assert d.request == 0 and s.backlog_since is None
    s, d = run(s, 6.0, 3, eps)
    assert d.request == 0
    s, d = run(s, 11.0, 3, eps)
    assert d.request == 3  # 1 + ceil(3 / 2)


def test_waiting_tasks_that_fit_the_room_ask_for_nothing() -> None:
    s, d = run(State(), 0.0, 2, {"a": IDLE})
    s, d = run(s, 10.0, 2, {"a": IDLE})
    assert d.unplaced == 0 and d.request == 0


def test_the_request_holds_while_hosts_start_and_connect() -> None:
    cfg = Config(max_hosts=10, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 6, {"a": FULL}, cfg=cfg)
    assert d.request == 4
    # a new host connected and took 2: same total, not more
    s, d = run(s, 1.0, 4, {"a": FULL, "b": FULL}, cfg=cfg)
    assert d.request == 4
    # tasks ended meanwhile: the request does not shrink while a backlog remains
    s, d = run(s, 2.0, 1, {"a": FULL, "b": FULL}, cfg=cfg)
    assert d.request == 4


def test_the_request_is_bounded_by_min_and_max_hosts() -> None:
    cfg = Config(max_hosts=2, min_hosts=2, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 100, {"a": FULL}, cfg=cfg)
    assert d.request == 2
    cfg = Config(max_hosts=5, min_hosts=3, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 1, {}, cfg=cfg)
    assert d.request == 3


def test_the_request_is_withdrawn_when_nothing_is_unplaced() -> None:
    cfg = Config(max_hosts=4, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 9, {"a": FULL}, cfg=cfg)
    assert d.request == 4
    s, d = run(s, 1.0, 0, {"a": FULL, "b": FULL}, cfg=cfg)
    assert d.request == 0 and s.requested == 0


def test_idle_discovered_endpoints_are_retired_after_a_quiet_window_beyond_min_hosts() -> None:
    cfg = Config(max_hosts=4, min_hosts=1, window_s=5.0, per_host=2)
    eps = {"a": IDLE, "b": IDLE, "c": Endpoint(connected=True, inflight=1), "static": IDLE}
    disc = {"a", "b", "c"}
    s, d = run(State(), 0.0, 0, eps, disc, cfg)
    assert d.retire == ()
    s, d = run(s, 5.0, 0, eps, disc, cfg)
    # c is busy and stays as the one host of min_hosts; static was not discovered
    assert sorted(d.retire) == ["a", "b"]
    assert set(s.retired) == set(d.retire)
    # discovery no longer offers them
    found = {"a": [], "b": [], "c": []}
    assert autoscale.visible(found, s) == {"c": []}


def test_min_hosts_keeps_that_many_hosts_with_an_endpoint() -> None:
    cfg = Config(max_hosts=4, min_hosts=2, window_s=0.0, per_host=2)
    eps = {"a": IDLE, "b": IDLE, "c": IDLE}
    s, d = run(State(), 0.0, 0, eps, cfg=cfg)
    assert len(d.retire) == 1
    s, d = run(s, 1.0, 0, {n: e for n, e in eps.items() if n not in d.retire}, set(eps), cfg)
    assert d.retire == ()


def test_a_task_waiting_stops_retiring() -> None:
    cfg = Config(max_hosts=4, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 1, {"a": IDLE, "b": IDLE}, cfg=cfg)
    assert d.retire == () and s.quiet_since is None


def test_retired_endpoints_come_back_at_once_when_tasks_are_unplaced() -> None:
    cfg = Config(max_hosts=4, window_s=5.0, per_host=2)
    s, d = run(State(), 0.0, 0, {"a": IDLE, "b": IDLE}, cfg=cfg)
    s, d = run(s, 5.0, 0, {"a": IDLE, "b": IDLE}, cfg=cfg)
    assert sorted(d.retire) == ["a", "b"]
    s, d = run(s, 6.0, 3, {}, {"a", "b"}, cfg)
    assert sorted(d.restore) == ["a", "b"] and d.request == 0 and s.retired == {}


def test_a_retired_host_that_stays_is_kept() -> None:
    cfg = Config(max_hosts=4, window_s=0.0, per_host=2, release_grace_s=30.0)
    s, d = run(State(), 0.0, 0, {"a": IDLE}, cfg=cfg)
    assert d.retire == ("a",)
    s, d = run(s, 29.0, 0, {}, {"a"}, cfg)
    assert d.restore == ()
    s, d = run(s, 30.0, 0, {}, {"a"}, cfg)
    assert d.restore == ("a",) and "a" in s.kept
    s, d = run(s, 31.0, 0, {"a": IDLE}, {"a"}, cfg)
    assert d.retire == ()


def test_hosts_that_left_are_forgotten() -> None:
    cfg = Config(max_hosts=4, window_s=0.0, per_host=2)
    s, d = run(State(), 0.0, 0, {"a": IDLE}, cfg=cfg)
    assert "a" in s.retired
    s, d = run(s, 1.0, 0, {}, set(), cfg)
    assert s.retired == {}


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_hosts=0), dict(max_hosts=2, min_hosts=3), dict(max_hosts=2, per_host=0),
     dict(max_hosts=2, window_s=-1.0)],
)
def test_bad_bounds_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Config(**kwargs)  # type: ignore[arg-type]
