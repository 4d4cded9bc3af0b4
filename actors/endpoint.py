"""EndpointWorker: owns one ComfyUI server — its websocket, its queue depth, its in-flight prompts.

A plain async class; `actors/remote.py` makes it a Ray actor. Ray re-runs `__init__` after a
crash and methods are at-most-once, so nothing lives only here: every in-flight prompt is in the
log (`task.dispatched` is recorded *before* POST /prompt), and `start()` rebuilds from it.

The websocket is a best-effort accelerator. The source of truth is ComfyUI's `/queue` and
`/history` (comfyui-protocol §3.7): after every (re)connect, and on a timer while prompts are
in flight, each prompt is reconciled — still queued or running: followed; in history:
collected; in neither: lost, so dispatched again elsewhere (or failed after the last attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import websockets

from actors import metrics
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.comfy import history as comfy_history
from comfy_fleet import errors
from comfy_fleet.log import events, task_state
from comfy_fleet.storage import blob_store as storage
from comfy_fleet.log.coalescer import Coalescer
from comfy_fleet.comfy.history import OutputFile
from comfy_fleet.config import Endpoint, Settings
from comfy_fleet.log.event_log import EventLog
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.workflows.registry import WorkflowRegistry

log = logging.getLogger("comfy_fleet.endpoint")

#: Seconds between reconciliations of in-flight prompts against /queue and /history.
POLL_INTERVAL_S = 2.0
#: A progress event per task at most this often (the log is not a metrics pipe).
PROGRESS_MIN_INTERVAL_S = 0.5
#: Time limit of the reconciler's /queue and /history reads (a hung ComfyUI must not hold it).
RECONCILE_TIMEOUT_S = 5.0
#: How long we keep re-reading a history entry that is not there yet after completion.
HISTORY_GRACE_S = 5.0
#: Attempts to append one decision through conflicts before giving up.
APPEND_RETRIES = 8
#: `task.started` waits this long; a prompt that ends sooner records it with its end, in one
#: append (the log keeps every fact; tiny prompts just cost one round trip less).
STARTED_DEBOUNCE_S = 0.2
#: History entries and files of finished prompts are deleted from ComfyUI in batches, this
#: often. On a busy endpoint a batch holds many tasks; at 0.5 s an endpoint finishing two tasks
#: a second sent two cleanup requests per task, on both hosts.
HISTORY_TRASH_S = 2.0
#: Files named in one cleanup request (the extension takes up to 1000).
CLEANUP_BATCH = 500
#: Tries to fetch a finished prompt's outputs while ComfyUI does not answer /view (down, timing
#: out, 5xx) before the task fails with output_fetch_failed; between tries the prompt goes back
#: to the reconciler, which finds it again in /history or, after a restart, runs it again.
OUTPUT_FETCH_TRIES = 5
#: How long events are held in memory while PostgreSQL is away before we give up.
DB_OUTAGE_BUDGET_S = 600.0


class RouterPort(Protocol):
    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None: ...
    async def task_finished_many(self, name: str, task_ids: list[str]) -> None: ...
    async def task_requeued(self, task_id: str, priority: int, created_at: float) -> None: ...


@dataclass
class Inflight:
    task_id: str
    prompt_id: str
    #: True once POST /prompt returned (or after a restart): only then may reconcile call it lost.
    posted: bool = False
    finishing: bool = False
    last_frame: float = field(default_factory=time.monotonic)
    last_progress_at: float = 0.0
    #: times its outputs could not be fetched because ComfyUI did not answer
    fetch_failures: int = 0
    posted_at: float = 0.0
    dispatched_at: float = field(default_factory=time.monotonic)
    #: ComfyUI said execution_start (or history shows it ran)
    started: bool = False
    #: records `task.started` unless the prompt ends first (cancelled then: no wake-up at all)
    started_timer: asyncio.TimerHandle | None = None


def _ctx(endpoint: str, task_id: str, prompt_id: str | None, **more: Any) -> dict[str, Any]:
    """Structured log fields: with Ray's JSON logging each becomes a key of the line."""
    # "task_id" is taken by Ray (its own task id) in its JSON lines, so ours is "fleet_task_id".
    return {"endpoint": endpoint, "fleet_task_id": task_id, "prompt_id": prompt_id, **more}


def _started_if_missing(s: TaskState, prompt_id: str) -> list[events.Event]:
    return [events.TaskStarted(prompt_id=prompt_id)] if s.status == task_state.DISPATCHED else []


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# dispatch() results
ACCEPTED, REFUSED, RETRY = "accepted", "refused", "retry"


class EndpointWorker:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        settings: Settings,
        log: EventLog,
        store: storage.BlobStore,
        router: RouterPort,
        client: ComfyClient | None = None,
        labels: Sequence[str] = (),
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.settings = settings
        self.log = log
        self.store = store
        self.router = router
        self.client = client or ComfyClient(endpoint)
        self.labels = list(labels)
        # A fresh clientId per actor life: a restarted actor never shares a registration with a
        # socket of its previous life (comfyui-protocol §3.7).
        self.client_id = f"comfy-fleet-{uuid.uuid4().hex}"
        self.connected = False
        self.queue_remaining = 0
        self.inflight: dict[str, Inflight] = {}
        self.by_task: dict[str, str] = {}
        self.states: dict[str, TaskState] = {}
        self.reconnects = 0
        self.last_seen: float | None = None
        self.has_cleanup: bool | None = None
        #: the cleanup extension's version (2 and up delete a batch of files in one request)
        self.cleanup_version = 0
        self.object_info: dict[str, Any] | None = None
        #: workflows this endpoint can run (its node classes and model files), None until known
        self.runnable: list[str] | None = None
        self.registry: WorkflowRegistry | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._stopping = False
        self._bg: set[asyncio.Task[Any]] = set()
        self._ws: Any = None
        self._reconcile_lock = asyncio.Lock()
        self._last_ws_frame = 0.0
        self._down_since: float | None = time.monotonic()
        #: prompt_ids given up on (endpoint unreachable): removed from its queue when it is back
        self.abandoned: set[str] = set()
        self.zombies = 0
        self._reported_connected: bool | None = None
        self._history_trash: list[str] = []
        #: (type, subfolder, filename) to delete through the extension with the next trash run
        self._file_trash: list[tuple[str, str, str]] = []
        # Tasks let go of without recording their end, batched into one actor call (see
        # comfy_fleet/log/coalescer). An end we record needs no call: the append notifies the router and
        # the webhook dispatcher through the log (EventLog.listen_ended).
        self._finished: Coalescer[str] = Coalescer(
            lambda ids: self.router.task_finished_many(self.name, ids)
        )

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Idempotent: rebuild in-flight prompts from the log, then run the socket and poller."""
        async with self._start_lock:
            if self._started:
                return
            self._started = True
            for state in await self._with_db(self.log.open_tasks):
                if state.endpoint == self.name and state.prompt_id and state.status in (
                    task_state.DISPATCHED,
                    task_state.RUNNING,
                ):
                    self.states[state.task_id] = state
                    self._track(Inflight(state.task_id, state.prompt_id, posted=True))
            self._spawn(self._ws_loop())
            self._spawn(self._poll_loop())

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._bg):
            t.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        await self.client.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        # Keep a strong reference: the loop holds tasks only weakly.
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _track(self, item: Inflight) -> None:
        self.inflight[item.prompt_id] = item
        self.by_task[item.task_id] = item.prompt_id

    def _untrack(self, prompt_id: str) -> Inflight | None:
        item = self.inflight.pop(prompt_id, None)
        if item is not None:
            if item.started_timer is not None:
                item.started_timer.cancel()
            if self.by_task.get(item.task_id) == prompt_id:
                del self.by_task[item.task_id]
        return item

    async def status(self) -> dict[str, Any]:
        """What the router and GET /endpoints see. Also the router's heartbeat (starts us)."""
        await self.start()
        metrics.endpoint_state(
            self.name, queue_depth=self.queue_remaining, inflight=len(self.inflight),
            connected=self.connected,
        )
        return {
            "endpoint": self.name,
            "state": "connected" if self.connected else "disconnected",
            "connected": self.connected,
            "queue_remaining": self.queue_remaining,
            "inflight": len(self.inflight),
            "foreign_queue": self._foreign_queue(),
            "labels": self.labels,
            "last_seen": _iso(self.last_seen),
            "reconnects": self.reconnects,
            "zombies": self.zombies,
            "cleanup_extension": self.has_cleanup,
            "workflows": self.runnable,
        }

    def _foreign_queue(self) -> int:
        """Prompts of other clients in ComfyUI's queue, by ComfyUI's last count."""
        ours = sum(1 for i in self.inflight.values() if i.posted and not i.finishing)
        return max(0, self.queue_remaining - ours)

    async def reload_workflows(self) -> list[str] | None:
        """Re-read the workflows (after POST /workflows/reload) and what we can run of them."""
        self.registry = None
        self._learn_workflows()
        self._report(now=True)
        return self.runnable

    def _learn_workflows(self) -> None:
        if self.object_info is None:
            return
        if self.registry is None:
            self.registry, _problems = WorkflowRegistry.load(self.settings.workflows_dir)
        self.runnable = sorted(
            w.name for w in self.registry.workflows() if w.can_run(self.object_info)[0]
        )

    def _report(self, *, now: bool = False) -> None:
        """Tell the router of a change of connection (or of what we can run) at once. Queue
        depth is not pushed: the router counts what it dispatched here, and its heartbeat
        reads ComfyUI's own queue (other clients' prompts) every second — a push per status
        frame (three per prompt) cost more than the rest of the routing."""
        if now or self.connected != self._reported_connected:
            self._reported_connected = self.connected
            self._spawn(self._send_report())

    async def _send_report(self) -> None:
        status = {
            "connected": self.connected,
            "queue_remaining": self.queue_remaining,
            "inflight": len(self.inflight),
            "foreign_queue": self._foreign_queue(),
            "workflows": self.runnable,
        }
        await self._safe(self.router.endpoint_status(self.name, status))

    @staticmethod
    async def _safe(coro: Any) -> None:
        try:
            await coro
        except Exception:
            log.warning("notification failed", exc_info=True)

    # --- the log ----------------------------------------------------------------------------

    async def _with_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the log, holding on through a database outage (bounded), never dropping."""
        deadline = time.monotonic() + DB_OUTAGE_BUDGET_S
        delay = 0.2
        while True:
            try:
                return await fn(*args)
            except errors.DatabaseUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _state(self, task_id: str) -> TaskState:
        state = self.states.get(task_id)
        if state is None:
            state = await self._with_db(self.log.get, task_id)
            self.states[task_id] = state
        return state

    async def _decide(
        self, task_id: str, decide: Callable[[TaskState], list[events.Event]]
    ) -> tuple[TaskState, list[events.Event]]:
        """Append what `decide(state)` returns, re-deciding on a concurrent writer's conflict."""
        for _ in range(APPEND_RETRIES):
            state = await self._state(task_id)
            new = decide(state)
            if not new:
                return state, []
            try:
                state = await self._with_db(self.log.append, task_id, state.seq, new, state)
            except errors.ConcurrencyConflict:
                self.states.pop(task_id, None)
                continue
            self.states[task_id] = state
            return state, new
        raise errors.ConcurrencyConflict(f"task {task_id}: gave up after {APPEND_RETRIES} conflicts")

    # --- dispatch ---------------------------------------------------------------------------

    async def dispatch(self, task_id: str) -> str:
        """Take a queued task: record `dispatched` (a minted prompt_id), then POST it.

        Returns ACCEPTED (it is ours now, or it ended), REFUSED (not dispatchable: already
        taken, cancelled or final — drop it) or RETRY (we could not take it; it stays queued).
        """
        await self.start()
        if not self.connected:
            return RETRY
        self.states.pop(task_id, None)  # the router's view may be newer than our cache
        prompt_id = str(uuid.uuid4())
        max_attempts = self.settings.task_max_attempts

        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.status != task_state.QUEUED:
                return []
            if s.cancel_requested:
                return [events.TaskCancelled(where="router")]
            if s.attempt >= max_attempts:
                return [
                    events.TaskFailed(
                        code="endpoint_lost",
                        message=f"no ComfyUI completed the task in {s.attempt} attempts",
                    )
                ]
            return [events.TaskDispatched(endpoint=self.name, prompt_id=prompt_id, attempt=s.attempt + 1)]

        try:
            state, new = await self._decide(task_id, decide)
        except errors.ConcurrencyConflict:
            return REFUSED
        if not new:
            ours = (
                state.status == task_state.DISPATCHED
                and state.endpoint == self.name
                and state.prompt_id == prompt_id
            )
            if not ours:
                return REFUSED
            # Our `task.dispatched` committed but its answer was lost (the connection died
            # after the commit); the retry then conflicted with ourselves. The minted prompt_id
            # is in the log, so the task is ours: carry on and POST it.
        elif not isinstance(new[0], events.TaskDispatched):
            self._ended(task_id)
            return REFUSED
        item = Inflight(task_id, prompt_id)
        self._track(item)
        metrics.queue_wait(state.workflow, max(0.0, time.time() - state.created_at.timestamp()))
        log.debug("dispatched", extra=_ctx(self.name, task_id, prompt_id, attempt=state.attempt))
        try:
            # Inputs go to the endpoint the task was given, at dispatch: a re-dispatched task
            # uploads again to its new endpoint.
            await self._upload_inputs(state)
            await self.client.post_prompt(state.prompt, prompt_id, self.client_id)
        except errors.PromptRejected as exc:
            self._untrack(prompt_id)
            if not await self._fail(
                task_id,
                prompt_id,
                {"code": comfy_history.CODE_REJECTED, "message": exc.message, "details": exc.details},
            ):
                self._finished.add(task_id)
            self._spawn(self._cleanup(prompt_id, list(state.inputs), None))
            return ACCEPTED
        except errors.EndpointUnavailable as exc:
            if (exc.details or {}).get("connect"):
                # Surely never reached ComfyUI: put it back for another endpoint now.
                self._untrack(prompt_id)
                self.connected = False
                self._report()
                await self._requeue(task_id, prompt_id, "connect_failed")
                return RETRY
            # Ambiguous (sent, no answer): the reconciler finds it in /queue or /history.
            item.posted = True
            item.posted_at = time.monotonic()
            return ACCEPTED
        item.posted = True
        item.posted_at = item.last_frame = time.monotonic()
        return ACCEPTED

    async def _upload_inputs(self, state: TaskState) -> None:
        for spec in state.inputs:
            subfolder, _, name = str(spec["filename"]).rpartition("/")
            data = await self.store.get(spec["s3_key"])
            await self.client.upload_image(data, name, subfolder)

    async def dispatch_many(self, task_ids: list[str]) -> list[str]:
        """`dispatch` for a batch (one actor call from the router for many tasks)."""
        return list(await asyncio.gather(*(self.dispatch(t) for t in task_ids)))

    async def cancel(self, task_id: str) -> str:
        """Cancel a task we hold (the ingress already recorded `cancel_requested`).

        Queued in ComfyUI: deleted from its queue, then recorded cancelled. Running: interrupted
        by prompt_id (ComfyUI ignores that unless this very prompt runs), and the
        `execution_interrupted` that follows ends it cancelled. Storing: left to finish; the
        fold turns its success into `cancelled` and no success webhook goes out.
        """
        await self.start()
        prompt_id = self.by_task.get(task_id)
        item = self.inflight.get(prompt_id) if prompt_id else None
        if item is None or prompt_id is None:
            return "unknown"
        if item.finishing:
            return "storing"
        self.states.pop(task_id, None)
        try:
            running, pending = await self.client.queue()
            if prompt_id in pending:
                await self.client.delete_from_queue([prompt_id])
                running, pending = await self.client.queue()
                if prompt_id not in running and prompt_id not in pending and not item.finishing:
                    entry = await self.client.history(prompt_id)
                    if comfy_history.outcome(entry).kind == comfy_history.UNKNOWN:
                        item.finishing = True
                        inputs = list((await self._state(task_id)).inputs)
                        self._untrack(prompt_id)
                        if not await self._end(item, [events.TaskCancelled(where="comfyui_queue")]):
                            self._finished.add(task_id)
                        self._spawn(self._cleanup(prompt_id, inputs, None))
                        return "cancelled"
            if prompt_id in running:
                await self.client.interrupt(prompt_id)
                return "interrupting"
        except errors.EndpointUnavailable:
            return "unreachable"
        return "storing"

    async def _requeue(self, task_id: str, prompt_id: str, reason: str) -> None:
        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.prompt_id != prompt_id:
                return []
            if s.cancel_requested:
                return [events.TaskCancelled(where="endpoint")]
            return [events.TaskRequeued(endpoint=self.name, prompt_id=prompt_id, reason=reason)]

        state, new = await self._decide(task_id, decide)
        self.states.pop(task_id, None)
        if new and state.inputs:
            # The inputs uploaded here are not needed here any more (the staged copies in S3
            # stay for the next attempt, elsewhere).
            self._spawn(self._remove_uploads(list(state.inputs)))
        if new and isinstance(new[0], events.TaskRequeued):
            log.warning("task requeued: %s", reason, extra=_ctx(self.name, task_id, prompt_id))
            await self._safe(
                self.router.task_requeued(task_id, state.priority, state.created_at.timestamp())
            )
            self._finished.add(task_id)
        elif new:
            self._ended(task_id)

    # --- the websocket ----------------------------------------------------------------------

    async def _ws_loop(self) -> None:
        backoff = 0.25
        while not self._stopping:
            metrics.websocket_reconnect(self.name)
            try:
                async with websockets.connect(
                    f"{self.endpoint.ws_url}?clientId={self.client_id}",
                    max_size=None,
                    open_timeout=5,
                    ping_interval=10,
                    ping_timeout=10,
                    close_timeout=2,
                    compression=None,
                ) as ws:
                    self._ws = ws
                    self.connected = True
                    self._down_since = None
                    self.last_seen = time.time()
                    backoff = 0.25
                    self._report()
                    self._spawn(self._on_connected())
                    async for message in ws:
                        if isinstance(message, str):
                            self._on_frame(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, closed, bad handshake
                log.info("endpoint %s: websocket down (%s)", self.name, type(exc).__name__)
            finally:
                self._ws = None
            if self.connected:
                self.connected = False
                self._down_since = time.monotonic()
                self._report()
            self.reconnects += 1
            # Exponential backoff with full jitter; one loop per actor, so reconnects never stack.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 10.0)

    async def _on_connected(self) -> None:
        """After a (re)connect: learn the server, then reconcile everything in flight."""
        try:
            if self.object_info is None:
                self.object_info = await self.client.object_info()
                self._learn_workflows()
                self._report(now=True)
            if self.has_cleanup is None:
                self.cleanup_version = await self.client.cleanup_extension_version()
                self.has_cleanup = self.cleanup_version > 0
                if not self.has_cleanup:
                    log.warning(
                        "endpoint %s has no comfy-fleet cleanup extension: its files are left alone",
                        self.name,
                    )
            if self.abandoned:
                # Prompts we re-dispatched elsewhere while this server was away must not run
                # here too: drop them from its queue (a running one is interrupted).
                abandoned = list(self.abandoned)
                running, _pending = await self.client.queue()
                await self.client.delete_from_queue(abandoned)
                for pid in abandoned:
                    if pid in running:
                        await self.client.interrupt(pid)
                self.abandoned.clear()
        except errors.EndpointUnavailable:
            pass
        await self._reconcile(force=True)

    def _on_frame(self, raw: str) -> None:
        self.last_seen = time.time()
        self._last_ws_frame = time.monotonic()
        try:
            frame = orjson.loads(raw)
            kind, data = frame.get("type"), frame.get("data") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return
        if kind == "status":
            remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            if isinstance(remaining, int):
                self.queue_remaining = remaining
            return
        prompt_id = data.get("prompt_id")
        item = self.inflight.get(prompt_id) if isinstance(prompt_id, str) else None
        if item is None:
            return
        item.last_frame = time.monotonic()
        if kind == "execution_start":
            item.started = True
            if item.started_timer is None:
                item.started_timer = asyncio.get_running_loop().call_later(
                    STARTED_DEBOUNCE_S, self._started_due, item
                )
        elif kind == "progress":
            now = time.monotonic()
            value, maximum = data.get("value"), data.get("max")
            if (
                isinstance(value, int)
                and isinstance(maximum, int)
                and (now - item.last_progress_at >= PROGRESS_MIN_INTERVAL_S or value >= maximum)
            ):
                item.last_progress_at = now
                self._spawn(self._safe(self._progress_event(item, value, maximum, data.get("node"))))
        elif kind == "execution_error":
            self._spawn(self._finish(item, comfy_history.Outcome(
                comfy_history.ERROR, [], comfy_history.error_from_message(kind, data))))
        elif kind == "execution_interrupted":
            self._spawn(self._finish(item, comfy_history.Outcome(
                comfy_history.INTERRUPTED, [], comfy_history.error_from_message(kind, data))))
        elif kind == "executing" and data.get("node") is None:
            # The "done" marker: history is complete by now (comfyui-protocol §3.5).
            self._spawn(self._collect(item))

    def _started_due(self, item: Inflight) -> None:
        if item.finishing or self.inflight.get(item.prompt_id) is not item:
            return  # the end records it
        self._spawn(self._safe(self._started_event(item)))

    async def _started_event(self, item: Inflight) -> None:

        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.prompt_id != item.prompt_id or s.status == task_state.RUNNING:
                return []
            return [events.TaskStarted(prompt_id=item.prompt_id)]

        await self._decide(item.task_id, decide)

    async def _progress_event(self, item: Inflight, value: int, maximum: int, node: Any) -> None:
        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.prompt_id != item.prompt_id:
                return []
            return [
                events.TaskProgressed(
                    prompt_id=item.prompt_id, value=value, max=maximum,
                    node=None if node is None else str(node),
                )
            ]

        await self._decide(item.task_id, decide)

    # --- reconciliation ---------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(POLL_INTERVAL_S * random.uniform(0.8, 1.2))
            if not self.inflight:
                continue
            down = self._down_since
            if down is not None and time.monotonic() - down > self.settings.endpoint_lost_after_s:
                await self._give_up_inflight("endpoint_unreachable")
                continue
            with contextlib.suppress(Exception):
                await self._reconcile(force=not self.connected)

    async def _give_up_inflight(self, reason: str) -> None:
        """The server has been unreachable too long: its prompts go to other endpoints. If it
        comes back, they are removed from its queue; a late completion is ignored by the fold
        (the task's prompt_id has moved on), so nothing reaches the client twice."""
        for item in list(self.inflight.values()):
            if item.finishing:
                continue
            item.finishing = True
            self._untrack(item.prompt_id)
            self.abandoned.add(item.prompt_id)
            with contextlib.suppress(Exception):
                await self._requeue(item.task_id, item.prompt_id, reason)

    async def _reconcile(self, *, force: bool) -> None:
        """Look every posted prompt up in /queue, then /history (that order: ComfyUI writes the
        history before it drops a prompt from the queue, so nothing slips between the two)."""
        async with self._reconcile_lock:
            quiet_for = POLL_INTERVAL_S
            now = time.monotonic()
            candidates = [
                i for i in self.inflight.values()
                if i.posted and not i.finishing and (force or now - i.last_frame >= quiet_for)
            ]
            if not candidates:
                return
            try:
                running, pending = await self.client.queue(timeout_s=RECONCILE_TIMEOUT_S)
            except errors.EndpointUnavailable:
                self._unresponsive()
                return
            for item in candidates:
                if item.prompt_id in running or item.prompt_id in pending:
                    continue
                if item.finishing or item.prompt_id not in self.inflight:
                    continue
                try:
                    entry = await self.client.history(item.prompt_id, timeout_s=RECONCILE_TIMEOUT_S)
                except errors.EndpointUnavailable:
                    self._unresponsive()
                    return
                result = comfy_history.outcome(entry)
                if (
                    result.kind != comfy_history.UNKNOWN
                    and self.connected
                    and self._last_ws_frame < item.posted_at
                ):
                    # The server finished our prompt yet the socket said nothing since it was
                    # posted (not even the broadcast status): a zombie socket. Replace it.
                    self.zombies += 1
                    log.warning("endpoint %s: websocket is silent while the server works; reconnecting", self.name)
                    self._spawn(self._drop_socket())
                if result.kind == comfy_history.UNKNOWN:
                    # In neither: ComfyUI lost it (restarted, or never got it).
                    item.finishing = True
                    self._untrack(item.prompt_id)
                    await self._requeue(item.task_id, item.prompt_id, "lost_by_comfyui")
                else:
                    self._spawn(self._finish(item, result, entry))

    def _unresponsive(self) -> None:
        """ComfyUI does not answer HTTP: count it as down even if its socket looks open (a hung
        server still answers websocket pings). The socket is dropped so that a reconnect must
        succeed before we send it work; after ENDPOINT_LOST_AFTER_S its prompts go elsewhere."""
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self.connected:
            self.connected = False
            self._report()
            log.warning("endpoint %s does not answer HTTP; marked disconnected", self.name)
            self._spawn(self._drop_socket())

    async def _drop_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
            with contextlib.suppress(Exception):
                ws.transport.abort()

    async def _collect(self, item: Inflight) -> None:
        """Completion seen on the socket: read the history entry (retrying briefly if empty)."""
        deadline = time.monotonic() + HISTORY_GRACE_S
        while True:
            try:
                entry = await self.client.history(item.prompt_id)
            except errors.EndpointUnavailable:
                return  # the reconciler will come back to it
            result = comfy_history.outcome(entry)
            if result.kind != comfy_history.UNKNOWN or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if result.kind != comfy_history.UNKNOWN:
            await self._finish(item, result, entry)

    # --- the end of a prompt ----------------------------------------------------------------

    async def _finish(
        self, item: Inflight, result: comfy_history.Outcome, entry: dict[str, Any] | None = None
    ) -> None:
        if item.finishing or self.inflight.get(item.prompt_id) is not item:
            return
        item.finishing = True  # before any await: the socket and the reconciler may both come
        if item.started_timer is not None:
            item.started_timer.cancel()  # the end records `task.started` itself
        item.started = True
        # From the log when the cache lost it: an input left on the host is disk that never
        # comes back.
        try:
            state = await self._state(item.task_id)
            inputs, workflow = list(state.inputs), state.workflow
        except errors.FleetError:
            inputs, workflow = [], "unknown"
        metrics.comfyui_run(workflow, time.monotonic() - item.dispatched_at)
        try:
            if result.kind == comfy_history.SUCCESS:
                stored_from = time.monotonic()
                ended = await self._store_outputs(item, result.files)
                metrics.output_store(workflow, time.monotonic() - stored_from)
            elif result.kind == comfy_history.INTERRUPTED:
                state = await self._state(item.task_id)
                if state.cancel_requested:
                    ended = await self._end(item, [events.TaskCancelled(where="running")])
                else:
                    ended = await self._fail(item.task_id, item.prompt_id, result.error or {}, ran=True)
            else:
                ended = await self._fail(item.task_id, item.prompt_id, result.error or {}, ran=True)
        except errors.EndpointUnavailable as exc:
            log.warning(
                "endpoint %s: outputs of %s not fetched (%s); will reconcile",
                self.name, item.prompt_id, exc.message, extra=_ctx(self.name, item.task_id, item.prompt_id),
            )
            item.finishing = False
            return
        except Exception:
            log.exception("endpoint %s: finishing %s failed; will reconcile", self.name, item.prompt_id)
            item.finishing = False
            return
        self._untrack(item.prompt_id)
        if not ended:
            # The end was not ours to record (another writer's, or the task moved on): tell
            # the router our slot is free ourselves.
            self._finished.add(item.task_id)
        self._spawn(self._cleanup(item.prompt_id, inputs, entry))

    async def _cleanup(
        self, prompt_id: str, inputs: list[dict[str, Any]], entry: dict[str, Any] | None
    ) -> None:
        """Delete what the task left on the ComfyUI host: its uploaded inputs and its output
        files (through our extension, when the host has it) and its history entry. Runs after
        the end is recorded and the webhook is on its way, so it never delays either."""
        try:
            if self.has_cleanup:
                if entry is None:
                    entry = await self.client.history(prompt_id)
                files = comfy_history.all_files((entry or {}).get("outputs"))
                for spec in inputs:
                    subfolder, _, name = str(spec["filename"]).rpartition("/")
                    files.append(("input", subfolder, name))
                if self.cleanup_version >= 2:
                    # One request for the files of every task ending within HISTORY_TRASH_S:
                    # a request per file was a request per task on both hosts.
                    self._file_trash.extend(files)
                else:
                    for type_, subfolder, name in files:
                        await self.client.cleanup_delete(type_, name, subfolder)
        except Exception:
            log.info("endpoint %s: cleanup of %s incomplete", self.name, prompt_id, exc_info=True)
        # The staged copies of the inputs in S3 have served their purpose once the task ended.
        for spec in inputs:
            with contextlib.suppress(Exception):
                await self.store.delete(spec["s3_key"])
        self._history_trash.append(prompt_id)
        if len(self._history_trash) == 1:
            self._spawn(self._empty_history_trash())

    async def _remove_uploads(self, inputs: list[dict[str, Any]]) -> None:
        """Delete the input files a task uploaded to this host (not their staged S3 copies)."""
        if not self.has_cleanup:
            return
        for spec in inputs:
            subfolder, _, name = str(spec["filename"]).rpartition("/")
            with contextlib.suppress(Exception):
                await self.client.cleanup_delete("input", name, subfolder)

    async def _empty_history_trash(self) -> None:
        """The files and history entries of the tasks ended in the last HISTORY_TRASH_S, in a
        request or two (files first: a file must not outlive the entry naming it unseen)."""
        await asyncio.sleep(HISTORY_TRASH_S)
        batch, self._history_trash = self._history_trash, []
        files, self._file_trash = self._file_trash, []
        for start in range(0, len(files), CLEANUP_BATCH):
            chunk = files[start:start + CLEANUP_BATCH]
            try:
                await self.client.cleanup_delete_many(chunk)
            except errors.EndpointUnavailable:
                log.info("endpoint %s: cleanup of %d file(s) incomplete", self.name, len(chunk))
        try:
            await self.client.delete_history(batch)
        except errors.EndpointUnavailable:
            pass  # a restarted ComfyUI has no history left anyway

    async def _fail(
        self, task_id: str, prompt_id: str, error: dict[str, Any], *, ran: bool = False
    ) -> bool:
        """Record the prompt's failure; True when this append ended the task."""

        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.prompt_id != prompt_id:
                return []
            return [
                *(_started_if_missing(s, prompt_id) if ran else []),
                events.TaskFailed(
                    code=str(error.get("code") or comfy_history.CODE_EXECUTION),
                    message=str(error.get("message") or "failed"),
                    prompt_id=prompt_id,
                    node_id=error.get("node_id"),
                    node_type=error.get("node_type"),
                    details=error.get("details"),
                )
            ]

        _, new = await self._decide(task_id, decide)
        if new:
            self._ended(task_id)
        return bool(new)

    async def _end(self, item: Inflight, final: list[events.Event]) -> bool:
        """Record the prompt's end; True when this append ended the task."""

        def decide(s: TaskState) -> list[events.Event]:
            if s.is_final or s.prompt_id != item.prompt_id:
                return []
            if item.started:
                return [*_started_if_missing(s, item.prompt_id), *final]
            return final

        _, new = await self._decide(item.task_id, decide)
        if new:
            self._ended(item.task_id)
        return bool(new)

    def _ended(self, task_id: str) -> None:
        """We recorded the task's end (the log tells the router and the webhook dispatcher)."""
        state = self.states.pop(task_id, None)
        if state is not None and state.is_final:
            metrics.task_ended(state.workflow, state.status)
            metrics.end_to_end(state.workflow, max(0.0, time.time() - state.created_at.timestamp()))
            log.info(
                "task %s", state.status,
                extra=_ctx(self.name, task_id, state.prompt_id, workflow=state.workflow,
                           status=state.status, error_code=(state.error or {}).get("code")),
            )

    async def _store_outputs(self, item: Inflight, files: list[OutputFile]) -> bool:
        """Fetch every output from /view and store it; then record them and the success in
        one append, so a task never shows half its outputs as succeeded. True when this
        append ended the task."""
        stored = await asyncio.gather(
            *(self._store_one(item, index, f) for index, f in enumerate(files)),
            return_exceptions=True,
        )
        away = next((s for s in stored if isinstance(s, BaseException)), None)
        if away is not None:
            # ComfyUI did not answer (a blip, or a restart between /history and /view): no
            # verdict on the task. `_finish` hands the prompt back to the reconciler.
            item.fetch_failures += 1
            raise away
        failures = [s for s in stored if isinstance(s, dict)]
        outputs = [s for s in stored if isinstance(s, events.TaskOutputStored)]
        if failures:
            first = failures[0]
            return await self._end(
                item,
                [
                    *outputs,
                    events.TaskFailed(
                        code=first["code"], message=first["message"], prompt_id=item.prompt_id,
                        details={"outputs": failures},
                    ),
                ],
            )
        return await self._end(item, [*outputs, events.TaskSucceeded(prompt_id=item.prompt_id)])

    async def _store_one(
        self, item: Inflight, index: int, f: OutputFile
    ) -> events.TaskOutputStored | dict[str, Any]:
        try:
            key = storage.output_key(item.task_id, index, f.filename)
        except errors.FleetError as exc:
            return {"code": "unsafe_output_name", "message": exc.message, "filename": f.filename[:200]}
        try:
            data = await self.client.view(f.filename, f.subfolder, f.type)
        except errors.EndpointUnavailable as exc:
            if item.fetch_failures + 1 < OUTPUT_FETCH_TRIES:
                raise
            return {"code": "output_fetch_failed", "message": exc.message, "filename": f.filename}
        except errors.FleetError as exc:  # it answered, without the file
            return {"code": "output_fetch_failed", "message": exc.message, "filename": f.filename}
        content_type = storage.content_type_for(f.filename, data[:64])
        digest = storage.sha256_hex(data)
        fallback: str | None = None
        try:
            await self.store.put(key, data, content_type)
        except errors.StorageUnavailable as exc:
            # Never lost: keep the bytes on disk; the task fails with storage_failed and the
            # re-upload command completes it when S3 answers again.
            fallback = self._keep_locally(key, data)
            return {
                "code": "storage_failed", "message": exc.message, "filename": f.filename,
                "fallback_path": fallback, "s3_key": key, "node_id": f.node_id,
                "index": index, "subfolder": f.subfolder, "kind": f.kind,
                "content_type": content_type, "size": len(data), "sha256": digest,
            }
        return events.TaskOutputStored(
            prompt_id=item.prompt_id, index=index, node_id=f.node_id, filename=f.filename,
            subfolder=f.subfolder, kind=f.kind, content_type=content_type, size=len(data),
            sha256=digest, s3_key=key,
        )

    def _keep_locally(self, key: str, data: bytes) -> str:
        path = Path(self.settings.default_failed_image_path) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)
