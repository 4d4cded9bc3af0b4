"""Model files by name in the router: a task naming a model file goes only to an endpoint whose
loaders list it, learnt from the node info an endpoint reports by digest; a task naming a file
no endpoint holds waits until one reports it (no Ray: fake endpoint handles)."""

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
from comfy_fleet.workflows import model_files, raw_graph
from tests.support.polling import eventually
from tests.unit.test_router import FakeEndpoint


class HoldingEndpoint(FakeEndpoint):
    """A fake endpoint whose node info lists `loras` in LoraLoader's choices."""

    def __init__(self, name: str, loras: list[str]) -> None:
        super().__init__(name)
        self.hold(loras)

    def hold(self, loras: list[str]) -> None:
        """The host's files changed and its endpoint re-read /object_info: a new digest."""
        self.info = {"LoraLoader": {"input": {"required": {"lora_name": [list(loras)]}},
                                    "output": ["MODEL", "CLIP"]}}
        self.digest = raw_graph.digest(self.info)

    async def status(self) -> dict[str, Any]:
        return {**await super().status(), "node_info_digest": self.digest}

    async def node_catalog(self) -> dict[str, Any] | None:
        return {"digest": self.digest, "object_info": self.info}


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "HEARTBEAT_S", 0.02)


async def submit(log: InMemoryEventLog, lora: str) -> str:
    task_id = str(uuid.uuid4())
    needs = [{"param": "lora", "folder": "loras", "filename": lora}]
    await log.append(task_id, 0, [events.TaskSubmitted(
        workflow="text2img", workflow_version="v1", params={"lora": lora}, prompt={},
        required_labels=model_files.labels(needs), model_files=needs)])
    return task_id


async def test_a_task_runs_where_its_file_is_and_waits_while_no_endpoint_has_it() -> None:
    log = InMemoryEventLog()
    a = HoldingEndpoint("a:1", ["common.safetensors"])
    b = HoldingEndpoint("b:1", ["common.safetensors", "only-b.safetensors"])
    router = Router(settings=Settings(), log=log, endpoints={"a:1": a, "b:1": b},
                    rng=random.Random(1))
    await router.start()
    try:
        on_b = [await submit(log, "only-b.safetensors") for _ in range(2)]
        nowhere = await submit(log, "nowhere.safetensors")
        await eventually(lambda: len(b.dispatched) == 2, what="the tasks for b dispatched")
        assert sorted(b.dispatched) == sorted(on_b) and a.dispatched == []
        # No endpoint lists nowhere.safetensors: the task waits in the router, queued.
        await asyncio.sleep(0.2)
        assert nowhere not in a.dispatched + b.dispatched
        assert router.waiting.task_ids() == [nowhere]
        assert (await log.get(nowhere)).status == "queued"

        # The file appears on a's host; a's next status carries the new digest: it runs there.
        a.hold(["common.safetensors", "nowhere.safetensors"])
        await eventually(lambda: a.dispatched == [nowhere], what="the waiting task dispatched")
        assert len(router.waiting) == 0
        assert router.loads["a:1"].model_files == {
            "loras": frozenset({"common.safetensors", "nowhere.safetensors"})}
    finally:
        await router.stop()


async def test_a_pile_of_tasks_no_endpoint_can_take_does_not_hold_back_later_ones() -> None:
    """More than the 64 tasks a tenant's scan tries, all naming a file nobody holds, ahead of
    one naming a file an endpoint holds: that one is dispatched."""
    log = InMemoryEventLog()
    a = HoldingEndpoint("a:1", ["common.safetensors"])
    router = Router(settings=Settings(), log=log, endpoints={"a:1": a}, rng=random.Random(1))
    stuck = [await submit(log, "typo.safetensors") for _ in range(100)]
    runs = await submit(log, "common.safetensors")
    await router.start()
    try:
        await eventually(lambda: a.dispatched == [runs], what="the later task dispatched")
        assert sorted(router.waiting.task_ids()) == sorted(stuck)
    finally:
        await router.stop()
