"""Raw graphs in the router: a task needing node classes goes only to an endpoint that reports
them all, learnt from one node-info call per digest (no Ray: fake endpoint handles)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from actors import router as router_module
from actors.router import Router
from comfy_fleet.config import Settings
from comfy_fleet.log import events
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.policies import routing
from comfy_fleet.workflows import raw_graph
from tests.support.polling import eventually
from tests.unit.test_router import FakeEndpoint


class ClassyEndpoint(FakeEndpoint):
    """A fake endpoint that reports node classes by digest and hands them over on request."""

    def __init__(self, name: str, classes: list[str]) -> None:
        super().__init__(name)
        self.info = {c: {"input": {}, "output": ["IMAGE"]} for c in classes}
        self.digest = raw_graph.digest(self.info)
        self.catalog_calls = 0

    async def status(self) -> dict[str, Any]:
        return {**await super().status(), "node_info_digest": self.digest}

    async def node_catalog(self) -> dict[str, Any] | None:
        self.catalog_calls += 1
        return {"digest": self.digest, "object_info": self.info}


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "HEARTBEAT_S", 0.02)


def test_a_node_label_is_met_by_reported_classes_only() -> None:
    ep = routing.EndpointLoad("a", connected=True, labels=frozenset({"gpu"}),
                              workflows=frozenset({"solid"}))
    assert not ep.can_take("graph", ["node:SaveImage"])  # classes not known yet: wait
    ep.classes = frozenset({"SaveImage", "EmptyImage"})
    assert ep.can_take("graph", ["node:SaveImage", "node:EmptyImage", "gpu"])
    assert not ep.can_take("graph", ["node:SaveImage", "node:LoadImage"])
    assert not ep.can_take("graph", ["node:SaveImage", "cpu"])
    assert ep.can_take("solid", ["gpu"]) and not ep.can_take("other", [])


async def test_a_graph_task_goes_only_where_every_class_is() -> None:
    log = InMemoryEventLog()
    small = ClassyEndpoint("small:1", ["EmptyImage", "SaveImage"])
    big = ClassyEndpoint("big:1", ["EmptyImage", "SaveImage", "ImageBlur"])
    router = Router(settings=Settings(), log=log, endpoints={"small:1": small, "big:1": big},
                    rng=random.Random(1))
    await router.start()
    try:
        task_ids = []
        for _ in range(4):
            task_id = str(uuid.uuid4())
            labels = raw_graph.class_labels({"1": {"class_type": "ImageBlur"},
                                             "2": {"class_type": "SaveImage"}})
            await log.append(task_id, 0, [events.TaskSubmitted(
                workflow="graph", workflow_version="", params={}, prompt={},
                required_labels=labels)])
            task_ids.append(task_id)
        await eventually(lambda: len(big.dispatched) >= 2)
        await asyncio.sleep(0.1)
        assert small.dispatched == []
        assert set(big.dispatched) <= set(task_ids)
        # one node-info call per endpoint, however many heartbeats
        assert small.catalog_calls == 1 and big.catalog_calls == 1
        assert (await router.stats())["endpoints"]["big:1"]["node_info_digest"] == big.digest
        assert (await router.node_catalog(big.digest))["object_info"] == big.info
        assert await router.node_catalog("0" * 64) is None
    finally:
        await router.stop()
