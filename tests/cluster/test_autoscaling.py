"""Autoscaling on queue depth with Ray's real autoscaler over fake nodes (issue 16's proof).

tests/cluster/autoscale_scenario.py runs once, in a process of its own: a head with Ray's
autoscaler and two fake GPU node types (none running), the service with COMFYUI_DISCOVERY and
AUTOSCALE, a burst of tasks, then the wait until every node is gone. It reports what it saw;
the tests here judge it. Times are printed by bench/autoscale.py, never judged here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.test_multinode import SCENARIO_TIMEOUT_S, run_scenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.timeout(SCENARIO_TIMEOUT_S + 60),
]


@pytest.fixture(scope="module")
def scaled() -> dict[str, Any]:
    return run_scenario("", module="tests.cluster.autoscale_scenario")


def test_the_fleet_starts_with_no_gpu_host(scaled: dict[str, Any]) -> None:
    assert scaled["endpoints_before"] == [] and scaled["gpu_nodes_before"] == []


def test_a_burst_adds_nodes_and_its_tasks_run_on_them(scaled: dict[str, Any]) -> None:
    joined = scaled["nodes_joined_s"]
    # The autoscaler started GPU nodes for the router's request (none existed, none was asked
    # for otherwise), within the bound of two.
    assert 1 <= len(joined) <= 2 and scaled["max_gpu_nodes"] == len(joined)
    assert set(joined) <= set(scaled["gpu_labels"])
    # Every task ran on an endpoint of a node that was added.
    per_endpoint = scaled["per_endpoint"]
    assert set(per_endpoint) <= set(joined), per_endpoint
    assert sum(per_endpoint.values()) == scaled["submitted"]


def test_tasks_spread_over_the_added_nodes(scaled: dict[str, Any]) -> None:
    per_endpoint = scaled["per_endpoint"]
    assert len(scaled["nodes_joined_s"]) == 2, scaled["nodes_joined_s"]
    assert set(per_endpoint) == set(scaled["nodes_joined_s"]) and min(per_endpoint.values()) >= 1


def test_no_task_lost_and_each_ended_once(scaled: dict[str, Any]) -> None:
    tasks = scaled["tasks"]
    assert scaled["refused"] == [] and len(tasks) == scaled["submitted"] > 0
    assert all(t["status"] == "succeeded" for t in tasks), tasks
    # Never taken from a node while it ran there: one dispatch, one end, first attempt.
    assert all(t["attempt"] == 1 for t in tasks), tasks
    assert all(v == {"ended": 1, "dispatched": 1} for v in scaled["log"].values()), scaled["log"]


def test_after_the_backlog_the_endpoints_are_drained_and_the_nodes_removed(
    scaled: dict[str, Any],
) -> None:
    # The scenario waited for both; reaching here with their times means both happened.
    assert scaled["endpoints_gone_s"] >= 0 and scaled["nodes_removed_s"] >= 0
    assert scaled["watch_error"] is None
