"""The items of a POST /batches body (serve_app/batch_items.py), pure: each item is a POST /tasks
body (a raw graph, a pinned version), a sweep may pin its workflow's version, and a bad item is
named by its index."""

from __future__ import annotations

import pytest

from comfy_fleet import errors
from serve_app import batch_items, submission
from serve_app.batch_items import BatchRequest

OK = {"workflow": "solid", "params": {}}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def test_an_item_is_anything_post_tasks_takes() -> None:
    req = BatchRequest(tenant="acme", tasks=[
        OK,
        {"graph": GRAPH, "files": {"a.png": "aGk="}, "client_task_id": "g"},
        {"workflow": "solid", "workflow_version": "abc", "priority": 4},
        {**OK, "tenant": "acme"},
    ], priority=2)
    items, kind = batch_items.items_of(req)
    assert kind == "tasks"
    assert [it.workflow for it in items] == ["solid", "graph", "solid", "solid"]
    assert (items[1].graph, items[1].files, items[1].client_task_id) == (
        GRAPH, {"a.png": "aGk="}, "g",
    )
    assert [it.workflow_version for it in items] == [None, None, "abc", None]
    assert [it.priority for it in items] == [2, 2, 4, 2]


def test_a_bad_item_is_refused_naming_its_index() -> None:
    for bad, where in (
        ({"workflow": "solid", "graph": GRAPH}, "either `workflow`"),
        ({"graph": GRAPH, "workflow_version": "abc"}, "`workflow_version`"),
        ({"workflow": "solid", "files": {}}, "`files`"),
        ({"workflow": "solid", "workflow_version": ""}, "workflow_version"),
        ({**OK, "tenant": "beta"}, "tenant"),
        (7, "tasks[1]"),
    ):
        with pytest.raises(errors.InvalidRequest) as caught:
            batch_items.items_of(BatchRequest(tenant="acme", tasks=[OK, bad]))
        assert caught.value.status == 422 and caught.value.details["index"] == 1
        assert caught.value.message.startswith("tasks[1]: ") and where in caught.value.message


def test_a_sweep_may_pin_its_version_and_a_task_list_may_not() -> None:
    sweep = BatchRequest(
        tenant="acme", workflow="solid", params={"height": 2}, sweep={"width": [1, 2]},
        workflow_version="abc",
    )
    items, kind = batch_items.items_of(sweep)
    assert kind == "sweep" and [it.workflow_version for it in items] == ["abc", "abc"]
    assert [it.params for it in items] == [{"height": 2, "width": 1}, {"height": 2, "width": 2}]
    with pytest.raises(errors.InvalidRequest) as both:
        batch_items.items_of(BatchRequest(tenant="acme", tasks=[OK], workflow_version="abc"))
    assert "workflow_version" in both.value.message


def test_pinning_changes_the_batch_hash_and_leaves_unpinned_ones_as_they_were() -> None:
    plain = BatchRequest(tenant="acme", workflow="solid", sweep={"width": [1]})
    pinned = BatchRequest(
        tenant="acme", workflow="solid", sweep={"width": [1]}, workflow_version="abc"
    )
    assert "workflow_version" not in plain.canonical()
    assert submission.request_hash(plain.canonical()) != submission.request_hash(
        pinned.canonical()
    )
    # who sends it is no part of "the same body"
    assert plain == BatchRequest(
        tenant="acme", workflow="solid", sweep={"width": [1]}, principal=object()
    )


async def test_an_items_refusal_keeps_its_class_and_status() -> None:
    async def refuse(exc: errors.FleetError) -> None:
        raise exc

    unknown = errors.WorkflowVersionUnknown("no such version", {"workflow": "solid"})
    with pytest.raises(errors.WorkflowVersionUnknown) as caught:
        await batch_items.at(3, refuse(unknown))
    assert caught.value.status == 409 and caught.value.code == "workflow_version_unknown"
    assert caught.value.details == {"index": 3, "workflow": "solid"}
    graph = errors.GraphInvalid("node 7: NopeNode", {"node_id": "7", "problem": "class_unknown"})
    with pytest.raises(errors.GraphInvalid) as bad_graph:
        await batch_items.at(0, refuse(graph))
    assert bad_graph.value.details == {"index": 0, "node_id": "7", "problem": "class_unknown"}
    disabled = errors.RawGraphsDisabled("off", {"setting": "RAW_GRAPHS"})
    with pytest.raises(errors.RawGraphsDisabled) as off:
        await batch_items.at(2, refuse(disabled))
    assert off.value.status == 403 and off.value.details["index"] == 2
    # the service's state is not the item's: no index
    with pytest.raises(errors.StorageUnavailable) as down:
        await batch_items.at(1, refuse(errors.StorageUnavailable("S3 is down")))
    assert down.value.details is None
