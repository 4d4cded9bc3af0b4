"""EndpointWorker (actors/endpoint.py) without Ray, against a real in-process ComfyUI stand-in,
an in-memory event log and blob store, a fake router port that records its calls, and a
listener that records what the log tells the router and the webhook dispatcher of task ends."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors import endpoint as endpoint_module
from actors import endpoint_watch
from comfy_fleet.comfy.client import ComfyClient
from actors.endpoint import ACCEPTED, EndpointWorker
from comfy_standin.knobs import FailRule
from comfy_standin.testing import RunningStandIn, run_standin
from comfy_fleet.log import events, task_state
from comfy_fleet import storage
from comfy_fleet.config import REPO_ROOT, Settings, parse_endpoint
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.workflows.registry import WorkflowRegistry
from tests.support.polling import eventually

REGISTRY, _PROBLEMS = WorkflowRegistry.load(REPO_ROOT / "workflows")


@dataclass
class FakeRouter:
    statuses: list[dict[str, Any]] = field(default_factory=list)

    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)


@dataclass
class EndNotices:
    """The log's notices of ended tasks (EventLog.listen_ended), as the router and the webhook
    dispatcher hear them: the worker makes no call of its own for an end it records."""

    #: tasks with a webhook to deliver
    ended: list[str] = field(default_factory=list)
    #: (endpoint, task_id): the router frees that endpoint's slot
    freed: list[tuple[str | None, str]] = field(default_factory=list)

    def on_ended(self, task_id: str, endpoint: str | None, webhook_to: str | None) -> None:
        self.freed.append((endpoint, task_id))
        if webhook_to is not None:
            self.ended.append(task_id)


@dataclass
class Rig:
    standin: RunningStandIn
    log: InMemoryEventLog
    store: storage.InMemoryBlobStore
    router: FakeRouter
    hooks: EndNotices
    settings: Settings
    workers: list[EndpointWorker] = field(default_factory=list)

    async def worker(
        self, *, wait_connected: bool = True, request_timeout_s: float | None = None
    ) -> EndpointWorker:
        """A started worker (by default, once it is connected to the stand-in)."""
        endpoint = parse_endpoint(self.standin.host_port)
        client = ComfyClient(endpoint, timeout_s=request_timeout_s) if request_timeout_s else None
        w = EndpointWorker(
            endpoint, settings=self.settings, log=self.log, store=self.store, router=self.router,
            client=client,
        )
        self.workers.append(w)
        await w.start()
        if wait_connected:
            await eventually(lambda: w.connected, what="worker connected")
        return w

    async def task(self, prompt: dict[str, Any] | None = None, **params: Any) -> str:
        """A queued task of the shipped `solid` workflow (or of `prompt` as it is)."""
        task_id = str(uuid.uuid4())
        solid = REGISTRY.get("solid")
        resolved = solid.validate({"width": 8, "height": 8, **params})
        graph = prompt if prompt is not None else solid.build_prompt(resolved, task_id=task_id)
        await self.log.append(task_id, 0, [
            events.TaskSubmitted(workflow="solid", workflow_version=solid.version,
                                 params=resolved, prompt=graph, callback_url="http://127.0.0.1:9/x"),
        ])
        return task_id

    async def final(self, task_id: str, timeout: float = 20.0) -> TaskState:
        async def ended() -> TaskState | None:
            state = await self.log.get(task_id)
            return state if state.is_final else None

        return await eventually(ended, timeout=timeout, what=f"task {task_id} to end")

    async def status_of(self, task_id: str, status: str) -> TaskState:
        async def reached() -> TaskState | None:
            state = await self.log.get(task_id)
            return state if state.status == status else None

        return await eventually(reached, what=f"task {task_id} {status}")

    async def types(self, task_id: str) -> list[str]:
        return [e.type for e in await self.log.read(task_id)]


@pytest.fixture(autouse=True)
def fast_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reconciler's period is seconds in production; a test wants it to come round quickly.
    monkeypatch.setattr(endpoint_module, "POLL_INTERVAL_S", 0.2)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with run_standin() as s:
        r = Rig(
            standin=s, log=InMemoryEventLog(), store=storage.InMemoryBlobStore(),
            router=FakeRouter(), hooks=EndNotices(),
            settings=Settings(default_failed_image_path=tmp_path / "failed"),
        )
        await r.log.listen_ended(r.hooks.on_ended)
        try:
            yield r
        finally:
            for w in r.workers:
                await w.stop()


async def test_a_solid_prompt_succeeds_with_its_outputs_stored(rig: Rig) -> None:
    rig.standin.knobs.cleanup_extension = False  # keep the files on disk to compare with
    w = await rig.worker()
    task_id = await rig.task(batch_size=2, color=0x336699)
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.final(task_id)

    assert state.status == task_state.SUCCEEDED, state.error
    assert len(state.outputs) == 2
    for out in state.outputs:
        on_disk = (rig.standin.output_dir / out["subfolder"] / out["filename"]).read_bytes()
        stored, content_type = rig.store.objects[out["s3_key"]]
        assert stored == on_disk
        assert out["sha256"] == storage.sha256_hex(on_disk) and out["size"] == len(on_disk)
        assert content_type == out["content_type"] == "image/png"
        assert out["node_id"] == "2" and out["s3_key"].startswith(f"tasks/{task_id}/")
    types = await rig.types(task_id)
    assert types[:2] == ["task.submitted", "task.dispatched"]
    assert types[-3:] == ["task.output_stored", "task.output_stored", "task.succeeded"]
    await eventually(lambda: rig.hooks.ended == [task_id], what="the log tells of the end")
    await eventually(lambda: rig.hooks.freed == [(w.name, task_id)], what="the log's notice frees the slot")
    assert state.prompt_id and state.endpoint == rig.standin.host_port and state.attempt == 1
    # Every frame of the prompt came on one socket: its end was known without /history.
    assert rig.standin.counters.history_reads == 0


@pytest.mark.parametrize("version", [2, 1])
async def test_cleanup_removes_the_outputs_from_the_comfyui_host(version: int, rig: Rig) -> None:
    """With extension version 2 the files of the tasks ended together go in one request; an
    older extension gets one request per file."""
    rig.standin.knobs.cleanup_extension_version = version
    w = await rig.worker()
    task_ids = [await rig.task() for _ in range(3)]
    for task_id in task_ids:
        assert await w.dispatch(task_id) == ACCEPTED
    paths = []
    for task_id in task_ids:
        state = await rig.final(task_id)
        assert state.status == task_state.SUCCEEDED
        [out] = state.outputs
        assert out["s3_key"] in rig.store.objects
        paths.append(rig.standin.output_dir / out["subfolder"] / out["filename"])
    await eventually(lambda: not any(p.exists() for p in paths), what="outputs deleted on the host")
    assert w.cleanup_version == version
    assert rig.standin.counters.files_deleted == 3
    requests = rig.standin.counters.cleanup_requests
    assert (requests < 3) if version == 2 else (requests == 3)


async def test_a_task_ended_before_the_host_was_asked_about_cleanup_is_still_cleaned(
    rig: Rig,
) -> None:
    """The ask for the cleanup extension follows each connect (after the node info, which a
    real ComfyUI takes a while to give): a task that ends before it asks then."""
    w = await rig.worker()
    await eventually(lambda: w.janitor.has_extension is not None, what="the first ask")
    w.janitor.has_extension, w.janitor.version = None, 0  # as before the ask came back
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    [out] = (await rig.final(task_id)).outputs
    path = rig.standin.output_dir / out["subfolder"] / out["filename"]
    await eventually(lambda: not path.exists(), what="the output deleted on the host")
    assert w.janitor.has_extension is True


async def test_an_execution_error_ends_failed_with_the_node(rig: Rig) -> None:
    rig.standin.knobs.fail = [FailRule(node="SaveImage", count=1, exception_message="disk on fire")]
    w = await rig.worker()
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.final(task_id)
    assert state.status == task_state.FAILED
    assert state.error is not None
    assert state.error["code"] == "comfyui_execution_error"
    assert state.error["node_id"] == "2" and state.error["node_type"] == "SaveImage"
    assert "disk on fire" in state.error["message"]
    assert rig.store.objects == {}
    await eventually(lambda: rig.hooks.ended == [task_id], what="the log tells of the end")
    await eventually(lambda: rig.hooks.freed == [(w.name, task_id)], what="the log's notice frees the slot")


async def test_a_prompt_comfyui_rejects_ends_failed_with_node_errors(rig: Rig) -> None:
    w = await rig.worker()
    unknown = await rig.task(prompt={"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert await w.dispatch(unknown) == ACCEPTED
    state = await rig.final(unknown)
    assert state.status == task_state.FAILED and state.error is not None
    assert state.error["code"] == "comfyui_prompt_rejected"
    assert "NoSuchNode" in state.error["message"]
    assert "node_errors" in state.error["details"]

    graph = copy.deepcopy(REGISTRY.get("solid").graph)
    graph["1"]["inputs"]["width"] = -5
    bad_value = await rig.task(prompt=graph)
    assert await w.dispatch(bad_value) == ACCEPTED
    state = await rig.final(bad_value)
    assert state.error is not None and state.error["code"] == "comfyui_prompt_rejected"
    assert "1" in state.error["details"]["node_errors"]
    assert rig.standin.counters.prompts_run == 0
    await eventually(lambda: sorted(rig.hooks.ended) == sorted([unknown, bad_value]), what="the log tells of the end")
    # A rejected prompt's slot is freed too (by the notice of its end).
    assert sorted(rig.hooks.freed) == sorted([(w.name, unknown), (w.name, bad_value)])


async def test_a_dropped_websocket_is_made_up_for_by_the_reconciler(rig: Rig) -> None:
    rig.standin.knobs.node_delays = {"EmptyImage": 1.0}
    w = await rig.worker()
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    await rig.status_of(task_id, task_state.RUNNING)
    # Cut the socket and keep it down until the prompt is over: no completion frame reaches us.
    rig.standin.knobs.refuse_websockets = True
    rig.standin.drop_websockets()
    await eventually(lambda: not w.connected, what="worker disconnected")
    state = await rig.final(task_id)
    assert state.status == task_state.SUCCEEDED, state.error
    assert not w.connected  # collected through /queue + /history, not the socket
    [out] = state.outputs
    assert out["s3_key"] in rig.store.objects
    rig.standin.knobs.refuse_websockets = False
    await eventually(lambda: w.connected, what="reconnected")
    assert w.reconnects >= 1


async def test_a_socket_replaced_while_a_prompt_runs_makes_its_end_read_from_history(rig: Rig) -> None:
    """Frames sent while no socket is registered are lost and never replayed: a prompt that
    started on an earlier socket has its end and outputs read from /history."""
    rig.standin.knobs.cleanup_extension = False
    rig.standin.knobs.node_delays = {"EmptyImage": 1.0}
    w = await rig.worker()
    task_id = await rig.task(batch_size=2)
    assert await w.dispatch(task_id) == ACCEPTED
    await rig.status_of(task_id, task_state.RUNNING)
    rig.standin.drop_websockets()
    await eventually(lambda: w.reconnects >= 1 and w.connected, what="a new socket")
    state = await rig.final(task_id)
    assert state.status == task_state.SUCCEEDED, state.error
    assert rig.standin.counters.history_reads >= 1
    assert len(state.outputs) == 2
    for out in state.outputs:
        on_disk = (rig.standin.output_dir / out["subfolder"] / out["filename"]).read_bytes()
        assert rig.store.objects[out["s3_key"]][0] == on_disk


async def test_a_comfyui_restarted_empty_requeues_the_task(rig: Rig) -> None:
    rig.standin.knobs.node_delays = {"EmptyImage": 30.0}
    w = await rig.worker()
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    running = await rig.status_of(task_id, task_state.RUNNING)
    await rig.standin.restart()  # queue and history are gone
    async def requeued() -> bool:
        return (await rig.log.get(task_id)).status == task_state.QUEUED

    # The router hears of the requeue from the log's notice (tasks_queued_v1), not from a call.
    await eventually(requeued, what="the task requeued in the log")
    state = await rig.log.get(task_id)
    assert state.status == task_state.QUEUED
    assert state.past_prompt_ids == [running.prompt_id] and state.prompt_id is None
    types = await rig.types(task_id)
    assert types[-1] == "task.requeued"
    requeued = (await rig.log.read(task_id))[-1].event
    assert isinstance(requeued, events.TaskRequeued) and requeued.prompt_id == running.prompt_id
    assert rig.hooks.ended == [] and task_id not in w.by_task

    # The next attempt runs (here on the same, now empty, ComfyUI).
    rig.standin.knobs.node_delays = {}
    await eventually(lambda: w.connected, what="reconnected")
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.final(task_id)
    assert state.status == task_state.SUCCEEDED and state.attempt == 2


async def test_an_unsafe_output_name_fails_and_stores_nothing(rig: Rig) -> None:
    # A filename_prefix with a control character: ComfyUI (and the stand-in) write and report
    # `bad\x07name_00001_.png` as it is; we must never turn that into a key or a path.
    graph = copy.deepcopy(REGISTRY.get("solid").graph)
    graph["1"]["inputs"].update(width=8, height=8)
    graph["2"]["inputs"]["filename_prefix"] = "bad\x07name"
    w = await rig.worker()
    task_id = await rig.task(prompt=graph)
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.final(task_id)
    assert state.status == task_state.FAILED and state.error is not None
    assert state.error["code"] == "unsafe_output_name"
    assert rig.store.objects == {}
    assert state.outputs == []
    assert not any(rig.settings.default_failed_image_path.rglob("*"))


async def test_a_restarted_worker_rebuilds_and_collects_its_prompts(rig: Rig) -> None:
    rig.standin.knobs.node_delays = {"EmptyImage": 0.8}
    first = await rig.worker()
    tasks = [await rig.task(color=c) for c in (1, 2)]
    for t in tasks:
        assert await first.dispatch(t) == ACCEPTED
    await rig.status_of(tasks[0], task_state.RUNNING)
    await first.stop()  # the actor died; Ray runs __init__ again on the same log
    rig.workers.remove(first)

    second = await rig.worker(wait_connected=False)
    # Rebuilt from the log alone, before it has spoken to ComfyUI.
    assert set(second.by_task) == set(tasks)
    assert {i.prompt_id for i in second.inflight.values()} == {
        (await rig.log.get(t)).prompt_id for t in tasks
    }
    for t in tasks:
        state = await rig.final(t)
        assert state.status == task_state.SUCCEEDED, state.error
        assert len(state.outputs) == 1 and state.outputs[0]["s3_key"] in rig.store.objects
    assert rig.standin.counters.prompts_run == 2  # collected, never run again
    await eventually(lambda: sorted(rig.hooks.ended) == sorted(tasks), what="the log tells of the end")


async def test_prompts_given_up_on_are_dropped_from_the_queue_by_a_restarted_worker(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ComfyUI that stops answering loses its prompts to other endpoints; the actor
    restarts before it answers again: the new life finds them in its queue (each names its
    task) and drops them, as the log says their tasks moved on. They never run there."""
    monkeypatch.setattr(endpoint_watch, "RECONCILE_TIMEOUT_S", 0.5)
    rig.settings = dataclasses.replace(rig.settings, endpoint_lost_after_s=1.0)
    rig.standin.knobs.stall_worker = True  # both prompts wait in ComfyUI's queue
    first = await rig.worker()
    tasks = [await rig.task(color=c) for c in (1, 2)]
    for t in tasks:
        assert await first.dispatch(t) == ACCEPTED
    prompts = {(await rig.log.get(t)).prompt_id for t in tasks}
    rig.standin.knobs.hang = True  # answers nothing: given up on after ENDPOINT_LOST_AFTER_S
    for t in tasks:
        await rig.status_of(t, task_state.QUEUED)
    await first.stop()  # the actor died, and what it gave up on with it
    rig.workers.remove(first)

    rig.standin.knobs.hang = False
    second = await rig.worker()
    assert second.by_task == {}  # nothing of it is ours any more
    client = ComfyClient(parse_endpoint(rig.standin.host_port))
    try:
        async def dropped() -> bool:
            running, pending = await client.queue()
            return not prompts & (running | pending)

        await eventually(dropped, what="the abandoned prompts dropped from the queue")
    finally:
        await client.close()
    rig.standin.knobs.stall_worker = False
    assert rig.standin.counters.prompts_run == 0


async def test_cancel_of_a_prompt_waiting_in_the_comfyui_queue(rig: Rig) -> None:
    rig.standin.knobs.node_delays = {"EmptyImage": 1.0}
    w = await rig.worker()
    running, waiting = await rig.task(color=1), await rig.task(color=2)
    assert await w.dispatch(running) == ACCEPTED
    assert await w.dispatch(waiting) == ACCEPTED
    await rig.status_of(running, task_state.RUNNING)
    waiting_prompt = (await rig.log.get(waiting)).prompt_id
    client = ComfyClient(parse_endpoint(rig.standin.host_port))
    try:
        _, pending = await client.queue()
        assert waiting_prompt in pending

        state = await rig.log.get(waiting)
        await rig.log.append(waiting, state.seq, [events.TaskCancelRequested()], state)
        assert await w.cancel(waiting) == "cancelled"
        state = await rig.log.get(waiting)
        assert state.status == task_state.CANCELLED
        assert (await rig.log.read(waiting))[-1].event == events.TaskCancelled(where="comfyui_queue")
        running_ids, pending = await client.queue()
        assert waiting_prompt not in pending and waiting_prompt not in running_ids
    finally:
        await client.close()
    assert (await rig.final(running)).status == task_state.SUCCEEDED
    assert rig.standin.counters.prompts_run == 1
    await eventually(lambda: waiting in rig.hooks.ended, what="the log tells of the end")
    await eventually(lambda: (w.name, waiting) in rig.hooks.freed, what="the log's notice frees the slot")


async def test_cancel_of_a_running_prompt_interrupts_it(rig: Rig) -> None:
    rig.standin.knobs.node_delays = {"EmptyImage": 1.5}
    w = await rig.worker()
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.status_of(task_id, task_state.RUNNING)
    await rig.log.append(task_id, state.seq, [events.TaskCancelRequested()], state)
    assert await w.cancel(task_id) == "interrupting"
    state = await rig.final(task_id)
    assert state.status == task_state.CANCELLED
    assert (await rig.log.read(task_id))[-1].event == events.TaskCancelled(where="running")
    assert state.outputs == [] and rig.store.objects == {}
    await eventually(lambda: rig.hooks.ended == [task_id], what="the log tells of the end")
    await eventually(lambda: rig.hooks.freed == [(w.name, task_id)], what="the log's notice frees the slot")


async def test_cancel_of_a_task_it_does_not_hold_is_unknown(rig: Rig) -> None:
    w = await rig.worker()
    assert await w.cancel(str(uuid.uuid4())) == "unknown"


async def test_a_cleanup_batch_that_finds_the_host_down_is_given_up_and_later_ones_go(rig: Rig) -> None:
    """The host goes down between a task's end and its cleanup batch (sent HISTORY_TRASH_S
    later): that batch is dropped with a log line, nothing piles up, and once the host is back
    the next task's files are deleted as usual."""
    w = await rig.worker()
    first = await rig.task()
    assert await w.dispatch(first) == ACCEPTED
    assert (await rig.final(first)).status == task_state.SUCCEEDED
    await rig.standin.restart(down_s=2 * endpoint_module.HISTORY_TRASH_S + 0.5)
    await eventually(lambda: w.connected, timeout=20, what="worker reconnected")
    assert w._file_trash == []  # the batch went (and failed); it is not carried over
    second = await rig.task()
    assert await w.dispatch(second) == ACCEPTED
    state = await rig.final(second)
    assert state.status == task_state.SUCCEEDED
    [out] = state.outputs
    path = rig.standin.output_dir / out["subfolder"] / out["filename"]
    await eventually(lambda: not path.exists(), what="second task's output deleted on the host")



#: A GET /view slower than this is ComfyUI not answering (the worker's request timeout).
SHORT_TIMEOUT_S = 1.0


async def test_outputs_not_fetched_while_comfyui_is_away_are_fetched_once_it_answers(rig: Rig) -> None:
    """A /view that does not answer (here: the stand-in holds it past the worker's timeout) is
    no verdict on the task: the reconciler finds the prompt in /history again and the outputs
    are fetched once ComfyUI answers (the prompt does not run twice)."""
    w = await rig.worker(request_timeout_s=SHORT_TIMEOUT_S)
    rig.standin.knobs.view_delay = 3 * SHORT_TIMEOUT_S
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    await eventually(
        lambda: any(i.fetch_failures for i in w.inflight.values()), what="a /view timed out"
    )
    rig.standin.knobs.view_delay = 0.0
    state = await rig.final(task_id)
    assert state.status == task_state.SUCCEEDED, state.error
    [out] = state.outputs
    assert out["s3_key"] in rig.store.objects and rig.standin.counters.views >= 2
    assert state.attempt == 1 and rig.standin.counters.prompts_run == 1
    assert [e.type for e in await rig.log.read(task_id)].count("task.succeeded") == 1


async def test_outputs_that_never_come_fail_the_task_after_some_tries(rig: Rig) -> None:
    w = await rig.worker(request_timeout_s=SHORT_TIMEOUT_S)
    rig.standin.knobs.view_delay = 3 * SHORT_TIMEOUT_S
    task_id = await rig.task()
    assert await w.dispatch(task_id) == ACCEPTED
    state = await rig.final(task_id, timeout=60)
    assert state.status == task_state.FAILED and state.error is not None
    assert state.error["code"] == "output_fetch_failed"
    assert "timed out" in state.error["message"]
    assert rig.standin.counters.views == endpoint_module.OUTPUT_FETCH_TRIES and rig.store.objects == {}


async def test_a_stale_state_from_the_notice_is_caught_by_the_append_and_decided_again(rig: Rig) -> None:
    """The router passes the state the task's queued notice carried; a cancel recorded since
    makes the dispatch's append conflict in the log, and the task read afresh ends cancelled
    without reaching ComfyUI."""
    w = await rig.worker()
    task_id = await rig.task()
    carried = rig.log.queued_states.take(task_id)
    assert carried is not None
    state = await rig.log.get(task_id)
    await rig.log.append(task_id, state.seq, [events.TaskCancelRequested()], state)
    assert await w.dispatch(task_id, carried) in ("accepted", "refused")
    final = await rig.final(task_id)
    assert final.status == task_state.CANCELLED
    assert "task.dispatched" not in await rig.types(task_id)
    assert rig.standin.counters.prompts_accepted == 0
