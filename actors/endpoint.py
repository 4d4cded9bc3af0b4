"""EndpointWorker: owns one ComfyUI server: its websocket, its queue depth, its in-flight prompts.

A plain async class; `actors/remote.py` makes it a Ray actor. Ray re-runs `__init__` after a
crash and methods are at-most-once, so nothing lives only here: every in-flight prompt is in the
log (`task.dispatched` is recorded *before* POST /prompt), and `start()` rebuilds from it.

A thin shell wiring the parts together:
- `comfy_fleet.prompts.decisions`: what to record (pure); `.inflight`: each prompt's phase;
  `.ledger`: the log; `.outputs`: the output storer; `.janitor`: cleanup of the host;
- `comfy_fleet.comfy`: the ComfyUI protocol (HTTP client, websocket frames, history);
- `actors.endpoint_watch`: the websocket and the reconciler; `actors.endpoint_ends`: recording
  a prompt's end (or requeue) and letting go of it; `actors.endpoint_server`: its ComfyUI's
  nodes, model files and the workflows it can run, re-read while connected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

from actors import endpoint_stage, metrics
from actors.endpoint_stream import DispatchStream
from actors.endpoint_ends import PromptEnds, RouterPort, ctx, safe
from actors.endpoint_previews import PreviewHolder
from actors.endpoint_server import ServerInfo
from actors.endpoint_watch import Watch
from comfy_fleet import errors, hop_trace
from comfy_fleet.comfy import history
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.config import Endpoint, Settings
from comfy_fleet.log import cancel, task_state
from comfy_fleet.log.event_log import EventLog, state_from_json
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.prompts import decisions, inflight, janitor, model_pulls, outputs, render
from comfy_fleet.prompts.ledger import TaskLedger
from comfy_fleet import storage

# Re-exported: the router and the tests know them from here.
from comfy_fleet.prompts.decisions import ACCEPTED, REFUSED, RETRY  # noqa: F401
from actors.endpoint_watch import POLL_INTERVAL_S  # noqa: F401
from comfy_fleet.prompts.janitor import HISTORY_TRASH_S  # noqa: F401
from comfy_fleet.prompts.outputs import OUTPUT_FETCH_TRIES  # noqa: F401

log = logging.getLogger("comfy_fleet.endpoint")

__all__ = ["ACCEPTED", "REFUSED", "RETRY", "EndpointWorker", "RouterPort"]


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
        # socket of its previous life.
        self.client_id = f"comfy-fleet-{uuid.uuid4().hex}"
        #: its nodes, model files and runnable workflows (from /object_info)
        self.server = ServerInfo(
            self.name, self.client, settings.workflows_dir, report=lambda: self._report(now=True)
        )
        self._started = False
        self._start_lock = asyncio.Lock()
        self._bg: set[asyncio.Task[Any]] = set()
        self._reported_connected: bool | None = None

        self.table = inflight.InflightTable()
        self.ledger = TaskLedger(log)
        self.renderer = render.PromptRenderer(log)
        self.janitor = janitor.HostJanitor(self.name, self.client, store)
        self.models = model_pulls.ModelHost(self.name, self.client)
        self.ends = PromptEnds(
            self.name, ledger=self.ledger, table=self.table, client=self.client,
            storer=outputs.OutputStorer(
                self.client, store, fallback_dir=settings.default_failed_image_path
            ),
            janitor=self.janitor, router=router, spawn=self._spawn,
        )
        self.previews = PreviewHolder()
        self.watch = Watch(
            endpoint, client=self.client, client_id=self.client_id, table=self.table,
            previews=self.previews,
            ends=self.ends, spawn=self._spawn, report=self._report,
            learn_server=self._learn_server, lost_after_s=settings.endpoint_lost_after_s,
            # read from this module when built: tests shorten it here
            poll_interval_s=POLL_INTERVAL_S,
        )
        #: the stream the router hands tasks on (its calls of `dispatch_many` otherwise)
        self.stream = DispatchStream(
            self.name, router=router, spawn=self._spawn, dispatch_many=self.dispatch_many
        )

    # --- what the router, the tests and GET /endpoints read --------------------------------

    @property
    def connected(self) -> bool:
        return self.watch.conn.connected

    @property
    def queue_remaining(self) -> int:
        return self.watch.conn.queue_remaining

    @property
    def reconnects(self) -> int:
        return self.watch.conn.reconnects

    @property
    def inflight(self) -> dict[str, inflight.InflightPrompt]:
        return self.table.by_prompt

    @property
    def by_task(self) -> dict[str, str]:
        return self.table.by_task

    @property
    def cleanup_version(self) -> int:
        return self.janitor.version

    @property
    def _file_trash(self) -> list[janitor.HostFile]:
        """The host files waiting for the janitor's next batch (tests look at it)."""
        return self.janitor.file_trash

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Idempotent: rebuild in-flight prompts from the log, then run the socket and poller."""
        async with self._start_lock:
            if self._started:
                return
            self._started = True
            for state in await self.ledger.open_tasks():
                if state.endpoint == self.name and state.prompt_id and state.status in (
                    task_state.DISPATCHED,
                    task_state.RUNNING,
                ):
                    self.ledger.remember(state)
                    now = time.monotonic()
                    self.table.add(inflight.InflightPrompt(
                        state.task_id, state.prompt_id, phase=inflight.Phase.QUEUED,
                        dispatched_at=now, last_frame=now,
                    ))
            self._spawn(self.watch.socket_loop())
            self._spawn(self.watch.poll_loop())
            self._spawn(self.server.refresh_loop(
                self.settings.node_info_refresh_s, lambda: self.connected
            ))
            self._spawn(self.stream.run())

    async def stop(self) -> None:
        self.watch.stop()
        for t in list(self._bg):
            t.cancel()
        self.janitor.close()
        await self.watch.close_socket()
        await self.client.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # Keep a strong reference: the loop holds tasks only weakly.
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def status(self) -> dict[str, Any]:
        """What the router and GET /endpoints see. Also the router's heartbeat (starts us)."""
        await self.start()
        conn = self.watch.conn
        metrics.endpoint_state(
            self.name, queue_depth=conn.queue_remaining, inflight=len(self.table),
            connected=conn.connected,
        )
        return {
            "endpoint": self.name,
            "state": "connected" if conn.connected else "disconnected",
            "connected": conn.connected,
            "queue_remaining": conn.queue_remaining,
            "inflight": len(self.table),
            "foreign_queue": self._foreign_queue(),
            "labels": self.labels,
            "last_seen": conn.last_seen_iso,
            "reconnects": conn.reconnects,
            "zombies": conn.zombies,
            "cleanup_extension": self.janitor.has_extension,
            **self.server.status(),
            **self.models.status(),
        }

    def _foreign_queue(self) -> int:
        """Prompts of other clients in ComfyUI's queue, by ComfyUI's last count."""
        return max(0, self.watch.conn.queue_remaining - self.table.watched())

    async def reload_workflows(self) -> list[str] | None:
        """Re-read the workflows (after POST /workflows/reload) and what we can run of them."""
        runnable = await self.server.reload_workflows()
        self._report(now=True)
        return runnable

    async def _learn_server(self) -> None:
        """After a (re)connect: its nodes and model files (what we can run; told to the router
        when they changed), its cleanup extension and its model route."""
        await self.server.learn()
        await self.janitor.probe()
        await endpoint_stage.probe(self)

    def _report(self, *, now: bool = False) -> None:
        """Tell the router of a change of connection (or of what we can run) at once. Queue
        depth is not pushed: the router counts what it dispatched here, and its heartbeat
        reads ComfyUI's own queue (other clients' prompts) every second: a push per status
        frame (three per prompt) cost more than the rest of the routing."""
        if now or self.connected != self._reported_connected:
            self._reported_connected = self.connected
            self._spawn(self._send_report())

    async def _send_report(self) -> None:
        status = {
            "connected": self.connected,
            "queue_remaining": self.queue_remaining,
            "inflight": len(self.table),
            "foreign_queue": self._foreign_queue(),
            **self.server.status(),
            **self.models.status(),
        }
        await safe(self.router.endpoint_status(self.name, status))

    async def node_catalog(self) -> dict[str, Any] | None:
        """The node classes and input types we report: `{"digest", "object_info"}` (the
        normalised /object_info), or None before ComfyUI first answered."""
        return self.server.catalog()

    async def preview(
        self, task_id: str, after_version: int, timeout_s: float
    ) -> dict[str, Any] | None:
        """The task's latest preview, `{"version", "content_type", "data"}`, once its version
        is not `after_version`; None if none comes within `timeout_s` (at most
        PREVIEW_WAIT_MAX_S), if its prompt ends meanwhile, or at once if it is not in flight
        here. Previews are never logged."""
        found = await self.previews.next(
            task_id, after_version, timeout_s, held=lambda: task_id in self.table.by_task
        )
        return None if found is None else found.answer()

    # --- dispatch ---------------------------------------------------------------------------

    async def dispatch(self, task_id: str, known: dict[str, Any] | None = None) -> str:
        """Take a queued task: record `dispatched` (a minted prompt_id), then POST it. `known`:
        its state as its queued notice carried it, else read (a newer one makes the append
        conflict: it is read and decided again). Returns ACCEPTED (it is ours now, or it
        ended), REFUSED (not dispatchable: already taken, cancelled or final; drop it) or
        RETRY (we could not take it; it stays queued)."""
        hop_trace.mark("endpoint.called", task_id)
        await self.start()
        if not self.connected:
            return decisions.RETRY
        self.ledger.forget(task_id)  # the router's view may be newer than our cache
        if known is not None:
            self.ledger.remember(state_from_json(known))
        prompt_id = str(uuid.uuid4())
        max_attempts = self.settings.task_max_attempts
        try:
            state, new = await self.ledger.decide(task_id, lambda s: decisions.dispatch(
                s, endpoint=self.name, prompt_id=prompt_id, max_attempts=max_attempts,
            ))
        except errors.ConcurrencyConflict:
            return decisions.REFUSED
        hop_trace.mark("endpoint.dispatched", task_id)
        verdict = decisions.after_dispatch(state, new, endpoint=self.name, prompt_id=prompt_id)
        if verdict is decisions.AfterDispatch.REFUSED:
            return decisions.REFUSED
        if verdict is decisions.AfterDispatch.ENDED:
            self.ends.ended(task_id)
            return decisions.REFUSED
        now = time.monotonic()
        item = inflight.InflightPrompt(task_id, prompt_id, dispatched_at=now, last_frame=now)
        self.table.add(item)
        metrics.queue_wait(state.workflow, max(0.0, time.time() - state.created_at.timestamp()))
        log.debug("dispatched", extra=ctx(self.name, task_id, prompt_id, attempt=state.attempt))
        return await self._post(item, state)

    async def _post(self, item: inflight.InflightPrompt, state: TaskState) -> str:
        """Upload the task's inputs and POST its prompt; what went wrong decides the answer."""
        task_id, prompt_id = item.task_id, item.prompt_id
        try:
            # The version the task was accepted with, from the log (never the files on disk).
            prompt = await self.renderer.prompt_of(state)
            # Inputs and models go to the endpoint the task was given, at dispatch: a
            # re-dispatched task uploads (and pulls) again on its new endpoint.
            if not await endpoint_stage.prepare(self, item, state):
                return decisions.ACCEPTED  # failed or requeued there
            await self.client.post_prompt(prompt, prompt_id, self.client_id, task_id)
        except (errors.PromptRejected, errors.WorkflowVersionUnknown) as exc:
            self.table.remove(prompt_id)
            code = history.CODE_REJECTED if isinstance(exc, errors.PromptRejected) else exc.code
            error = {"code": code, "message": exc.message, "details": exc.details}
            ended = await self.ends.fail(task_id, prompt_id, error)
            self.ends.let_go(task_id, prompt_id, list(state.inputs), None, ended=ended)
            return decisions.ACCEPTED
        except errors.EndpointUnavailable as exc:
            if (exc.details or {}).get("connect"):
                # Surely never reached ComfyUI: put it back for another endpoint now.
                self.table.remove(prompt_id)
                self.watch.conn.connected = False
                self._report()
                await self.ends.requeue(task_id, prompt_id, "connect_failed")
                return decisions.RETRY
            # Ambiguous (sent, no answer): the reconciler finds it in /queue or /history.
            item.on_posted(time.monotonic(), answered=False)
            return decisions.ACCEPTED
        hop_trace.mark("endpoint.posted", task_id)
        item.on_posted(time.monotonic(), answered=True)
        return decisions.ACCEPTED

    async def dispatch_many(self, task_ids: list[str], states: list[Any] | None = None) -> list[str]:
        """`dispatch` for a batch (one actor call from the router for many tasks)."""
        known = states or [None] * len(task_ids)
        return list(await asyncio.gather(*(self.dispatch(t, k) for t, k in zip(task_ids, known))))

    # --- cancel -----------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> str:
        """Cancel a task we hold (the ingress already recorded `cancel_requested`): find where
        it is and do what `cancel.decide` says there.

        Queued in ComfyUI: deleted from its queue, then recorded cancelled. Running: interrupted
        by prompt_id (ComfyUI ignores that unless this very prompt runs), and the
        `execution_interrupted` that follows ends it cancelled. Storing: left to finish; the
        fold turns its success into `cancelled` and no success webhook goes out.
        """
        await self.start()
        item = self.table.of_task(task_id)
        if item is None:
            return cancel.UNKNOWN
        storing = cancel.decide(cancel.REQUESTED, cancel.Where.STORING)
        if not item.can_finish:
            return storing.answer
        prompt_id = item.prompt_id
        self.ledger.forget(task_id)
        try:
            running, pending = await self.client.queue()
            if prompt_id in pending:
                queued = cancel.decide(cancel.REQUESTED, cancel.Where.COMFYUI_QUEUE)
                await self.client.delete_from_queue([prompt_id])
                running, pending = await self.client.queue()
                if prompt_id not in running and prompt_id not in pending and item.can_finish:
                    entry = await self.client.history(prompt_id)
                    if history.outcome(entry).kind == history.UNKNOWN:
                        return await self._cancelled_in_queue(item, queued)
            if prompt_id in running:
                await self.client.interrupt(prompt_id)
                return cancel.decide(cancel.REQUESTED, cancel.Where.RUNNING).answer
        except errors.EndpointUnavailable:
            return cancel.UNREACHABLE
        return storing.answer

    async def _cancelled_in_queue(
        self, item: inflight.InflightPrompt, decision: cancel.Decision
    ) -> str:
        """Deleted from ComfyUI's queue before it ran: record `decision` (cancelled), let go."""
        if not item.can_finish:
            # its end came meanwhile: it finishes (the fold sees the cancel)
            return cancel.decide(cancel.REQUESTED, cancel.Where.STORING).answer
        ran = item.ran
        self.table.remove(item.prompt_id)  # nobody else may finish it now
        inputs = list((await self.ledger.state(item.task_id)).inputs)
        ended = await self.ends.end(item.task_id, item.prompt_id, list(decision.record), ran=ran)
        self.ends.let_go(item.task_id, item.prompt_id, inputs, None, ended=ended)
        return decision.answer

