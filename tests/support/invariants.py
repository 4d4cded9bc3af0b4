"""The promise of issue 5, checked for a set of acknowledged tasks after a fault:

- every task ends final (succeeded / failed / cancelled) within a bound;
- none ends twice: its log holds exactly one of task.succeeded / task.failed / task.cancelled;
- the log folds (``comfy_fleet.log.task_state.replay``) to what ``GET /tasks/{id}`` shows;
- stored outputs match: the bytes behind each presigned URL have the recorded sha256 and size;
- each end has exactly one final webhook delivery at the receiver, repeats of it carrying the
  same ``webhook-id`` and type (a ``storage_failed`` end later replaced by
  ``task.outputs_recovered`` is a second end, with its own id).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from comfy_fleet.log import events, task_state

from comfy_fleet.delivery import webhooks
from tests.support.webhook_receiver import WebhookReceiver

FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class Checked:
    """One task after the check: its API view and its events."""

    task: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return str(self.task["status"])

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def first(self, type_: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["type"] == type_), None)


def fold(evs: list[dict[str, Any]], task_id: str) -> task_state.TaskState:
    """GET /tasks/{id}/events → the state the fold makes of them."""
    stream = [
        events.StoredEvent(
            task_id=task_id,
            seq=int(e["seq"]),
            event=events.decode(e["type"], events.REGISTRY[e["type"]].SCHEMA_VERSION, e["data"]),
            at=datetime.fromisoformat(e["at"].replace("Z", "+00:00")),
        )
        for e in evs
    ]
    state = task_state.replay(stream)
    assert state is not None, f"task {task_id}: no events"
    return state


async def wait_final(
    http: httpx.AsyncClient, task_ids: list[str], *, timeout: float
) -> dict[str, dict[str, Any]]:
    """Poll until every task is final; AssertionError listing the stragglers at the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    finals: dict[str, dict[str, Any]] = {}
    while True:
        pending = [t for t in task_ids if t not in finals]
        for tid in pending:
            try:
                r = await http.get(f"/tasks/{tid}")
            except httpx.HTTPError:
                continue  # the service may be coming back; try again
            if r.status_code == 200 and r.json()["status"] in FINAL:
                finals[tid] = r.json()
        if len(finals) == len(task_ids):
            return finals
        if loop.time() > deadline:
            left = [t for t in task_ids if t not in finals]
            brief = {t: await _describe(http, t) for t in left}
            raise AssertionError(f"{len(left)} of {len(task_ids)} tasks did not end: {brief}")
        await asyncio.sleep(0.25)


async def _describe(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """What a task that did not end looks like: its view, its events, and what its ComfyUI
    says of its prompt (so a failure report names the stuck step)."""
    task = (await http.get(f"/tasks/{task_id}")).json()
    evs = (await http.get(f"/tasks/{task_id}/events")).json()
    out: dict[str, Any] = {
        "status": task.get("status"),
        "endpoint": task.get("endpoint"),
        "attempt": task.get("attempt"),
        "events": [(e["type"], e["at"][11:23]) for e in evs],
    }
    pid, ep = task.get("comfyui_task_id"), task.get("endpoint")
    if pid and ep:
        try:
            async with httpx.AsyncClient(timeout=5) as c:
                queue = (await c.get(f"http://{ep}/queue")).text
                out["comfyui_queue_has_it"] = pid in queue
                history = (await c.get(f"http://{ep}/history/{pid}")).text
                out["comfyui_history_has_it"] = pid in history
        except httpx.HTTPError as exc:
            out["comfyui"] = repr(exc)
    return out


async def _wait_webhooks(
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    tasks: dict[str, dict[str, Any]],
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Wait until the API says every callback end is delivered and the receiver has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        missing = []
        for tid, task in tasks.items():
            if not task.get("callback_url"):
                continue
            if task.get("webhook") != task_state.WEBHOOK_DELIVERED or not receiver.delivered(tid):
                task = tasks[tid] = (await http.get(f"/tasks/{tid}")).json()
                assert task.get("webhook") != task_state.WEBHOOK_DEAD, f"webhook dead: {task}"
                delivered = task.get("webhook") == task_state.WEBHOOK_DELIVERED
                if not delivered or not receiver.delivered(tid):
                    missing.append(tid)
        if not missing:
            return tasks
        if loop.time() > deadline:
            raise AssertionError(f"webhooks not delivered for {len(missing)} tasks: {missing[:5]}")
        await asyncio.sleep(0.25)


async def _sha256_of(client: httpx.AsyncClient, url: str) -> tuple[str, int]:
    r = await client.get(url)
    assert r.status_code == 200, f"output URL answered {r.status_code}"
    return hashlib.sha256(r.content).hexdigest(), len(r.content)


def _check_fold(tid: str, task: dict[str, Any], state: task_state.TaskState) -> None:
    view = task_state.to_view(state)
    for key in ("status", "attempt", "endpoint", "comfyui_task_id", "error", "webhook", "priority",
                "finished_at", "workflow", "callback_url", "client_task_id"):
        assert view[key] == task[key], (
            f"task {tid}: fold says {key}={view[key]!r}, API {task[key]!r}"
        )
    folded = [(o["s3_key"], o["sha256"], o["size"], o["content_type"]) for o in view["outputs"]]
    shown = [(o["s3_key"], o["sha256"], o["size"], o["content_type"]) for o in task["outputs"]]
    assert folded == shown, f"task {tid}: fold outputs {folded} != API outputs {shown}"


def _check_webhooks(
    tid: str, task: dict[str, Any], state: task_state.TaskState, receiver: WebhookReceiver
) -> None:
    assert state.end_seq is not None
    current = webhooks.webhook_id(tid, state.end_seq)
    allowed = {current, *state.past_webhook_ids}
    by_id: dict[str, set[str]] = {}
    for call in receiver.delivered(tid):
        by_id.setdefault(call.webhook_id, set()).add(str(call.json["type"]))
    unknown = set(by_id) - allowed
    assert not unknown, f"task {tid}: deliveries under unknown webhook-ids {unknown}"
    assert current in by_id, f"task {tid}: its end ({current}) was never delivered"
    for wid, types in by_id.items():
        assert len(types) == 1, f"task {tid}: webhook-id {wid} carried different ends {types}"
    assert by_id[current] == {f"task.{task['status']}"}, (
        f"task {tid}: delivered {by_id[current]} for {task['status']}"
    )


async def check_tasks(
    http: httpx.AsyncClient,
    task_ids: list[str],
    *,
    receiver: WebhookReceiver | None = None,
    timeout: float = 90.0,
    webhook_timeout: float = 60.0,
) -> dict[str, Checked]:
    """Assert the invariants above for `task_ids` (all acknowledged with 202); returns each
    task's final view and events for the test's own, fault-specific assertions."""
    assert len(set(task_ids)) == len(task_ids), "a task id was acknowledged twice"
    finals = await wait_final(http, task_ids, timeout=timeout)
    if receiver is not None:
        finals = await _wait_webhooks(http, receiver, finals, webhook_timeout)
    out: dict[str, Checked] = {}
    async with httpx.AsyncClient(timeout=30) as plain:
        for tid in task_ids:
            task = (await http.get(f"/tasks/{tid}")).json()
            evs = (await http.get(f"/tasks/{tid}/events")).json()
            assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), f"task {tid}: seq gaps"
            ends = [e["type"] for e in evs if e["type"] in events.FINAL_TYPES]
            assert len(ends) == 1, f"task {tid} ended {len(ends)} times: {ends}"
            succeeded_runs = [e for e in evs if e["type"] == "task.succeeded"]
            assert len(succeeded_runs) <= 1, f"task {tid}: succeeded twice"
            state = fold(evs, tid)
            _check_fold(tid, task, state)
            for o in task["outputs"]:
                digest, size = await _sha256_of(plain, o["url"])
                assert (digest, size) == (o["sha256"], o["size"]), (
                    f"task {tid}: stored output differs"
                )
            if receiver is not None and task.get("callback_url"):
                _check_webhooks(tid, task, state, receiver)
            out[tid] = Checked(task, evs)
    return out
