"""Watch: follows one ComfyUI server: its websocket, and the reconciler behind it.

The websocket is a best-effort accelerator. The source of truth is ComfyUI's `/queue` and
`/history`: after every (re)connect, and on a timer while prompts are in flight, each prompt is
reconciled: still queued or running, followed; in history, its end taken up; in neither, lost,
so dispatched again elsewhere (or failed after the last attempt). What a frame or a lookup
means is decided in `comfy_fleet.comfy.frames` and `comfy_fleet.prompts.decisions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import websockets

from actors import metrics
from actors.endpoint_ends import PromptEnds, Spawn, safe
from actors.endpoint_previews import PreviewHolder
from comfy_fleet import errors, hop_trace
from comfy_fleet.comfy import frames, history
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.config import Endpoint
from comfy_fleet.prompts import decisions
from comfy_fleet.prompts.inflight import InflightPrompt, InflightTable, Phase

log = logging.getLogger("comfy_fleet.endpoint")

#: Seconds between reconciliations of in-flight prompts against /queue and /history.
POLL_INTERVAL_S = 2.0
#: A progress event per task at most this often (the log is not a metrics pipe).
PROGRESS_MIN_INTERVAL_S = 0.5
#: Time limit of the reconciler's /queue and /history reads (a hung ComfyUI must not hold it).
RECONCILE_TIMEOUT_S = 5.0
#: `task.started` waits this long; a prompt that ends sooner records it with its end, in one
#: append (the log keeps every fact; tiny prompts just cost one round trip less).
STARTED_DEBOUNCE_S = 0.2


@dataclass
class Connection:
    """What we know of the server's reachability."""

    connected: bool = False
    #: ComfyUI's queue length by its last status frame (every client's prompts)
    queue_remaining: int = 0
    #: wall-clock time of the last text frame
    last_seen: float | None = None
    #: monotonic time of the last text frame
    last_frame_at: float = 0.0
    #: monotonic time since when it is unreachable; None while it answers
    down_since: float | None = field(default_factory=time.monotonic)
    reconnects: int = 0
    #: sockets found silent while the server worked (and replaced)
    zombies: int = 0

    @property
    def last_seen_iso(self) -> str | None:
        if self.last_seen is None:
            return None
        return datetime.fromtimestamp(self.last_seen, UTC).isoformat().replace("+00:00", "Z")


class Watch:
    def __init__(
        self, endpoint: Endpoint, *, client: ComfyClient, client_id: str, table: InflightTable,
        ends: PromptEnds, spawn: Spawn, report: Callable[[], None],
        learn_server: Callable[[], Awaitable[None]], lost_after_s: float,
        poll_interval_s: float = POLL_INTERVAL_S, previews: PreviewHolder | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.client = client
        self.client_id = client_id
        self.table = table
        self.ends = ends
        self.spawn = spawn
        #: tells the router of a change of connection (the shell decides whether to send)
        self.report = report
        #: learns the server after a connect (its nodes, its cleanup extension)
        self.learn_server = learn_server
        self.lost_after_s = lost_after_s
        self.poll_interval_s = poll_interval_s
        self.conn = Connection()
        #: prompt_ids given up on in this life (endpoint unreachable): removed from its queue
        #: when it is back, with those the log says were given up on (`_drop_abandoned`)
        self.abandoned: set[str] = set()
        self._stopping = False
        self._ws: Any = None
        self._reconcile_lock = asyncio.Lock()
        #: `task.started` timers, by prompt_id (one per prompt: set when it enters RUNNING)
        self._started_timers: dict[str, asyncio.TimerHandle] = {}
        #: the latest preview of each prompt of ours (never logged)
        self.previews = previews if previews is not None else PreviewHolder()
        #: our prompt that runs now, by its last frame: a type-1 preview names no prompt
        #: (ComfyUI runs one prompt at a time; any other prompt's frame or an end clears it)
        self.running_prompt: str | None = None

    def stop(self) -> None:
        """Let the loops end (their tasks are the caller's to cancel)."""
        self._stopping = True
        for timer in self._started_timers.values():
            timer.cancel()

    async def close_socket(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    # --- the websocket ----------------------------------------------------------------------

    async def socket_loop(self) -> None:
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
                    self.conn.connected = True
                    self.conn.down_since = None
                    self.conn.last_seen = time.time()
                    backoff = 0.25
                    self.report()
                    self.spawn(self._on_connected())
                    async for message in ws:
                        self.on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, closed, bad handshake
                log.info("endpoint %s: websocket down (%s)", self.name, type(exc).__name__)
            finally:
                self._ws = None
            if self.conn.connected:
                self.conn.connected = False
                self.conn.down_since = time.monotonic()
                self.report()
            self.conn.reconnects += 1
            # Exponential backoff with full jitter; one loop per actor, so reconnects never stack.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 10.0)

    async def _on_connected(self) -> None:
        """After a (re)connect: learn the server, then reconcile everything in flight."""
        try:
            await self.learn_server()
            await self._drop_abandoned()
        except (errors.EndpointUnavailable, errors.DatabaseUnavailable):
            pass  # the next (re)connect drops them
        await self.reconcile(force=True)

    async def _drop_abandoned(self) -> None:
        """Prompts re-dispatched elsewhere while this server was away must not run here too:
        they are dropped from its queue (a running one is interrupted). Which: those this life
        gave up on (`abandoned`: their requeue may not be recorded yet), and every prompt in the
        queue that names a task (`client.TASK_KEY`) we do not follow and whose log says it
        moved on (`decisions.abandoned`): those given up on before a restart of this actor,
        whose memory went with it."""
        running, tasks = await self.client.queued_tasks()
        drop = set(self.abandoned)
        for prompt_id, task_id in tasks.items():
            if prompt_id not in drop and self.table.get(prompt_id) is None and (
                decisions.abandoned(prompt_id, await self.ends.ledger.read(task_id))
            ):
                drop.add(prompt_id)
        if drop:
            log.info("endpoint %s: dropping %d abandoned prompts", self.name, len(drop))
            await self.client.delete_from_queue(sorted(drop))
            for pid in drop & running:
                await self.client.interrupt(pid)
        self.abandoned.clear()

    def on_message(self, raw: str | bytes) -> None:
        """One websocket message. Binary frames (previews, websocket images) are only kept as
        previews and do not count as signs of life (the text frames do)."""
        if not isinstance(raw, str):
            self._on_binary(frames.parse(raw))
            return
        self.conn.last_seen = time.time()
        self.conn.last_frame_at = time.monotonic()
        frame = frames.parse(raw)
        if isinstance(frame, frames.Status):
            if frame.queue_remaining is not None:
                self.conn.queue_remaining = frame.queue_remaining
            return
        if not isinstance(frame, frames.ABOUT_A_PROMPT):
            return
        item = self.table.get(frame.prompt_id)
        ended = isinstance(frame, frames.Failed | frames.Done)
        self.running_prompt = frame.prompt_id if item is not None and not ended else None
        if item is None:
            return
        if ended:
            self.previews.drop(item.task_id)
        item.last_frame = time.monotonic()
        if isinstance(frame, frames.Started):
            if item.phase in (Phase.POSTING, Phase.QUEUED):
                # The first start: `task.started` waits STARTED_DEBOUNCE_S (see there).
                self._started_timers[item.prompt_id] = asyncio.get_running_loop().call_later(
                    STARTED_DEBOUNCE_S, self._started_due, item
                )
            item.on_started(self.conn.reconnects)
        elif isinstance(frame, frames.Executed):
            item.on_executed(self.conn.reconnects, frame.node, frame.output)
        elif isinstance(frame, frames.Succeeded):
            item.on_succeeded(self.conn.reconnects)
        elif isinstance(frame, frames.Progress):
            now = time.monotonic()
            if decisions.progress_due(
                last_at=item.last_progress_at, now=now, value=frame.value, maximum=frame.max,
                min_interval_s=PROGRESS_MIN_INTERVAL_S,
            ):
                item.last_progress_at = now
                self.spawn(safe(self.ends.record_progress(item, frame.value, frame.max, frame.node)))
        elif isinstance(frame, frames.Failed):
            self.spawn(self.ends.finish(item, frame.outcome()))
        elif isinstance(frame, frames.Done):
            # The "done" marker. Every frame of the prompt came on this socket: its end is
            # known without reading /history; otherwise history is complete by now.
            hop_trace.mark("endpoint.done_frame", item.task_id)
            seen = item.outcome_from_frames(self.conn.reconnects)
            if seen is not None:
                self.spawn(self.ends.finish(item, *seen))
            else:
                self.spawn(self.ends.collect(item))

    def _on_binary(self, frame: frames.Frame) -> None:
        """A preview of one of our prompts is kept (the latest only); anything else dropped."""
        if not isinstance(frame, frames.Preview):
            return
        prompt_id = frame.prompt_id or self.running_prompt
        item = self.table.get(prompt_id) if prompt_id is not None else None
        if item is None:
            return
        self.previews.keep_only(self.table.by_task)
        self.previews.put(item.task_id, frame.content_type, frame.image)

    def _started_due(self, item: InflightPrompt) -> None:
        self._started_timers.pop(item.prompt_id, None)
        if not item.can_finish or not self.table.holds(item):
            return  # the end records it
        self.spawn(safe(self.ends.record_started(item)))

    # --- reconciliation ---------------------------------------------------------------------

    async def poll_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_interval_s * random.uniform(0.8, 1.2))
            if not self.table:
                continue
            down = self.conn.down_since
            if down is not None and time.monotonic() - down > self.lost_after_s:
                await self._give_up_inflight("endpoint_unreachable")
                continue
            with contextlib.suppress(Exception):
                await self.reconcile(force=not self.conn.connected)

    async def _give_up_inflight(self, reason: str) -> None:
        """The server has been unreachable too long: its prompts go to other endpoints. If it
        comes back, they are removed from its queue; a late completion is ignored by the fold
        (the task's prompt_id has moved on), so nothing reaches the client twice."""
        for item in list(self.table.by_prompt.values()):
            if not item.can_finish:
                continue
            self.table.remove(item.prompt_id)
            self.abandoned.add(item.prompt_id)
            with contextlib.suppress(Exception):
                await self.ends.requeue(item.task_id, item.prompt_id, reason)

    async def reconcile(self, *, force: bool) -> None:
        """Look every watched prompt up in /queue, then /history (that order: ComfyUI writes the
        history before it drops a prompt from the queue, so nothing slips between the two)."""
        async with self._reconcile_lock:
            candidates = self.table.quiet(time.monotonic(), self.poll_interval_s, force=force)
            if not candidates:
                return
            try:
                running, pending = await self.client.queue(timeout_s=RECONCILE_TIMEOUT_S)
            except errors.EndpointUnavailable:
                self.unresponsive()
                return
            for item in candidates:
                if item.prompt_id in running or item.prompt_id in pending:
                    continue  # decisions.Found.FOLLOW, without reading /history
                if not item.watched or not self.table.holds(item):
                    continue
                try:
                    entry = await self.client.history(item.prompt_id, timeout_s=RECONCILE_TIMEOUT_S)
                except errors.EndpointUnavailable:
                    self.unresponsive()
                    return
                await self._found(item, history.outcome(entry), entry)

    async def _found(
        self, item: InflightPrompt, result: history.Outcome, entry: dict[str, Any] | None
    ) -> None:
        """A watched prompt that is not in /queue, with its /history outcome."""
        if decisions.silent_socket(
            outcome_kind=result.kind, connected=self.conn.connected,
            last_frame_at=self.conn.last_frame_at, posted_at=item.posted_at,
        ):
            self.conn.zombies += 1
            log.warning("endpoint %s: websocket is silent while the server works; reconnecting", self.name)
            self.spawn(self.drop_socket())
        found = decisions.reconciled(in_queue=False, outcome_kind=result.kind)
        if found is decisions.Found.LOST:
            self.table.remove(item.prompt_id)
            await self.ends.requeue(item.task_id, item.prompt_id, "lost_by_comfyui")
        elif found is decisions.Found.FINISH:
            self.spawn(self.ends.finish(item, result, entry))

    def unresponsive(self) -> None:
        """ComfyUI does not answer HTTP: count it as down even if its socket looks open (a hung
        server still answers websocket pings). The socket is dropped so that a reconnect must
        succeed before we send it work; after ENDPOINT_LOST_AFTER_S its prompts go elsewhere."""
        if self.conn.down_since is None:
            self.conn.down_since = time.monotonic()
        if self.conn.connected:
            self.conn.connected = False
            self.report()
            log.warning("endpoint %s does not answer HTTP; marked disconnected", self.name)
            self.spawn(self.drop_socket())

    async def drop_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
            with contextlib.suppress(Exception):
                ws.transport.abort()
