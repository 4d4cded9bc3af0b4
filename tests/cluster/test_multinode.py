"""Issue 6's multi-node proof: the service on a Ray cluster of several nodes on one machine
(`ray.cluster_utils.Cluster`) with ComfyUI stand-ins.

Each scenario runs once per module in a process of its own (tests/cluster/scenario.py: one Ray
instance per process, and pytest's may hold the e2e suite's), which reports what it observed as
one JSON line; the tests here judge those observations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.scenario import RESULT_PREFIX, ROOT

#: seconds one scenario may take, start-up and teardown included (about 50 s on an idle
#: 2-core machine; several times that when other suites share it)
SCENARIO_TIMEOUT_S = 300

# The scenario runs in the first test's setup: its time counts against that test's timeout.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.timeout(SCENARIO_TIMEOUT_S + 60),
]

def run_scenario(name: str, module: str = "tests.cluster.scenario") -> dict[str, Any]:
    """Run `python -m <module> <name>` (a session of its own) and return its RESULT line."""
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    # A session of its own: on a timeout the whole group (the cluster's nodes too) is killed.
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *([name] if name else [])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"scenario {name} ran over {SCENARIO_TIMEOUT_S} s:\n{err.decode()[-4000:]}")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        pytest.fail(
            f"scenario {name} printed no result (exit {proc.returncode}):\n{err.decode()[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if "error" in result:
        pytest.fail(
            f"scenario {name} failed:\n{result['error']}\n--- stderr ---\n{err.decode()[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def placement() -> dict[str, Any]:
    return run_scenario("placement")


@pytest.fixture(scope="module")
def discovery() -> dict[str, Any]:
    return run_scenario("discovery")


def by_id(tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in tasks}


# --- placement: COMFYUI_ENDPOINTS on a cluster whose worker nodes are labelled ------------


def test_endpoint_without_a_node_runs_anywhere_and_every_endpoint_serves(
    placement: dict[str, Any],
) -> None:
    nodes = placement["nodes"]
    actor_nodes = placement["actor_node_of"]
    # Every configured endpoint has an actor, on a live node of the cluster.
    assert set(actor_nodes) == {*placement["labelled_endpoints"], placement["unmatched_endpoint"]}
    assert all(nodes[n]["alive"] for n in actor_nodes.values())
    # The cluster is what the scenario meant: a head without the resource, labelled workers.
    head = nodes[placement["head_node_id"]]
    assert head["comfyui"] == 0 and head["label"] is None
    labels = {info["label"] for info in nodes.values() if info["comfyui"] > 0}
    assert labels == set(placement["labelled_endpoints"])
    assert placement["unmatched_endpoint"] not in labels
    # Tasks run through the API on this cluster.
    assert placement["refused"] == []
    assert placement["tasks"] and all(t["status"] == "succeeded" for t in placement["tasks"]), (
        placement["tasks"]
    )


def test_endpoint_actor_runs_on_the_node_labelled_with_its_endpoint(
    placement: dict[str, Any],
) -> None:
    node_of_label = {info["label"]: n for n, info in placement["nodes"].items() if info["label"]}
    for endpoint in placement["labelled_endpoints"]:
        assert placement["actor_node_of"][endpoint] == node_of_label[endpoint], endpoint


# --- discovery: nodes with the comfyui resource join and leave --------------------------


def test_a_node_with_the_resource_adds_an_endpoint_that_receives_tasks(
    discovery: dict[str, Any],
) -> None:
    first, second = discovery["first"], discovery["second"]
    assert discovery["endpoints_at_start"] == [first]
    assert [t["status"] for t in discovery["phase1"]] == ["succeeded"] * len(discovery["phase1"])
    assert {t["endpoint"] for t in discovery["phase1"]} == {first}

    assert discovery["endpoints_after_join"] == sorted([first, second])
    phase2 = discovery["phase2"]
    assert phase2 and all(t["status"] == "succeeded" for t in phase2), phase2
    # Tasks submitted after the second endpoint connected use both.
    assert {t["endpoint"] for t in phase2} == {first, second}
    assert discovery["refused"] == []


def test_a_node_leaving_drains_its_endpoint_without_losing_a_task(
    discovery: dict[str, Any],
) -> None:
    first = discovery["first"]
    assert discovery["nodes"][discovery["second_node_id"]]["alive"] is False
    caught = discovery["in_flight_on_second_at_removal"]
    assert caught, "the scenario removed the node with no task in flight there"
    # Its endpoint is out of GET /endpoints (it was taken out of routing, then removed).
    assert discovery["endpoints_after_leave"] == [first]
    # Every acknowledged task ended, succeeded: none lost, none failed.
    phase3 = discovery["phase3"]
    assert discovery["refused"] == [] and len(phase3) == discovery["phase3_submitted"]
    assert [t["status"] for t in phase3] == ["succeeded"] * len(phase3), phase3
    # The tasks on the node when it left ran again on the other endpoint (one whose outputs
    # were already fetched may still have been stored by its endpoint: nothing was lost).
    recovered = by_id(phase3)
    assert any(
        recovered[t]["endpoint"] == first and recovered[t]["attempt"] >= 2 for t in caught
    ), [recovered[t] for t in caught]
    assert all(recovered[t]["endpoint"] == first for t in caught if recovered[t]["attempt"] >= 2)


def test_discovered_endpoint_actors_run_on_their_nodes(discovery: dict[str, Any]) -> None:
    assert discovery["first_actor_node"] == discovery["first_node_id"]
    assert discovery["second_actor_node"] == discovery["second_node_id"]
