"""Router: keeps the tasks not yet dispatched and hands each to the least-loaded endpoint.

A plain async class implementing `actors.ports.RouterApi` (`actors/remote.py` makes it the
named Ray actor). Its waiting tasks (`actors.router_waiting`) are derived state: on (re)start
they are rebuilt from the log (every task whose status is `queued`), and so is the fair share
among tenants (the tenants of the latest logged dispatches), so a router crash loses nothing and
a restart keeps the share. Each free slot goes to the task `FairShare.next` picks (the tenant
with the least weighted service lately, then priority and age within it) among those an
endpoint can take (`comfy_fleet.policies.routing.pick_endpoint`); the endpoint records
`task.dispatched` with the expected seq, so even two routers could not assign a task twice.
Which endpoints there are is `actors.router_fleet`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from actors import metrics, ports, router_fleet, router_nodes, router_streams, router_waiting
from comfy_fleet import hop_trace
from comfy_fleet.config import Settings
from comfy_fleet.log import cancel, event_log, fleet, task_state
from comfy_fleet.policies import queue_eta, routing
from comfy_fleet.policies.fair_share import WaitingTask

log = logging.getLogger("comfy_fleet.router")

#: Seconds between endpoint heartbeats (status calls; they also restart a crashed endpoint).
HEARTBEAT_S = 2.0
#: At most this many heartbeat calls a second: a larger fleet is polled less often (every
#: 8 s at 1,024 endpoints), so its heartbeats stay near 5 % of a core (a Ray call costs the
#: router about 0.2-0.4 ms of CPU). Endpoints push a change of connection at once anyway.
HEARTBEAT_MAX_CALLS_S = 128.0
#: Seconds between scans of the log for queued tasks the router does not hold.
SCAN_S = 5.0
#: How long the router remembers that it handed a task out (see actors/router_waiting.py).
TAKEN_MEMORY_S = 60.0
#: A heartbeat slower than this marks the endpoint disconnected.
HEARTBEAT_TIMEOUT_S = router_fleet.HEARTBEAT_TIMEOUT_S


class RouterLog(event_log.TaskQueries, event_log.TaskNotices, event_log.FleetLog, Protocol):
    """What the router needs of the log: it reads tasks and hears of them, records only fleet
    events (the endpoints record the tasks' events)."""


class Router(router_fleet.FleetMembership):
    def __init__(
        self,
        *,
        settings: Settings,
        log: RouterLog,
        endpoints: dict[str, ports.EndpointApi] | None = None,
        rng: random.Random | None = None,
        factory: Callable[[str, list[str]], Awaitable[ports.EndpointApi]] | None = None,
        destroy: Callable[[str], Awaitable[None]] | None = None,
        configured: dict[str, list[str]] | None = None,
        discover: Callable[[], Awaitable[dict[str, list[str]]]] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        #: creates (or finds) the endpoint actor of a ComfyUI; None: fixed `endpoints` only
        self.factory = factory
        self.destroy = destroy
        self.configured = dict(configured or {})
        #: discovery mode: the endpoints the cluster offers now (name → labels)
        self.discover = discover
        self.discovered: set[str] = set()
        self.handles: dict[str, ports.EndpointApi] = dict(endpoints or {})
        self.loads: dict[str, routing.EndpointLoad] = {
            name: routing.EndpointLoad(name) for name in self.handles
        }
        self.assigned: dict[str, set[str]] = {name: set() for name in self.handles}
        self.waiting = router_waiting.WaitingTasks(settings.weights, memory_s=TAKEN_MEMORY_S)
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._started = False
        self._start_lock = asyncio.Lock()
        self._bg: set[asyncio.Task[Any]] = set()
        self.dispatched_total = 0
        #: the loop that keeps the fold snapshot fresh (actors/fold_snapshots.py), when built
        self.fold_snapshots: Any = None
        #: what each endpoint holds in dispatch order, and run times (queue position and ETA)
        self.book = queue_eta.QueueBook()
        self.node_info = router_nodes.NodeInfo(self.handles.get, self._spawn, self._wake.set)
        #: each endpoint's open dispatch stream, and what was put on it
        self.streams = router_streams.DispatchStreams()

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self.factory is not None:
                # The configured endpoints plus what was added or removed at run time.
                for name, labels in fleet.endpoints(self.configured, await self.log.read_fleet()).items():
                    await self._attach(name, labels)
            self.waiting.rebuild(await self.log.dispatch_tenants(), await self.log.queued_tasks())
            await self._rebuild_slots()
            self._started = True
            await self.log.listen_queued(self._on_queued)
            await self.log.listen_ended(self._on_ended, self._catch_up_ended)
            self._spawn(self._dispatch_loop())
            self._spawn(self._heartbeat_loop())
            self._spawn(self._scan_loop())
            if self.discover is not None:
                self._spawn(self._discovery_loop())
            self._wake.set()

    async def _rebuild_slots(self) -> None:
        """The slots in use, from the log: each task dispatched or running is held by its
        endpoint. A router started afresh would otherwise count every endpoint as empty (and
        overfill it) and not find a running task to cancel. The end notices free them, and the
        catch-up when listening starts frees those that ended before it."""
        now = time.monotonic()
        for state in await self.log.open_tasks():
            if state.endpoint and state.status in (task_state.DISPATCHED, task_state.RUNNING):
                self.assigned.setdefault(state.endpoint, set()).add(state.task_id)
                self.book.dispatched(state.task_id, state.endpoint, state.workflow, now)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def stop(self) -> None:
        for t in list(self._bg):
            t.cancel()
        if self.fold_snapshots is not None:
            await self.fold_snapshots.stop()

    # --- calls from the ingress -------------------------------------------------------------

    def _on_queued(
        self, task_id: str, priority: int, created_at: float, workflow: str, labels: list[str],
        requeued: bool, tenant: str = "default",
    ) -> None:
        """A task waits for dispatch (the log's notice): queue it. A requeued one was let go of
        by the endpoint it was given to: that slot is free, and it may be handed out again."""
        hop_trace.mark("router.heard", task_id)
        task = router_waiting.waiting_task(task_id, priority, created_at, workflow, labels, tenant)
        if requeued:
            self.streams.forget(task_id)
            for name in list(self.assigned):
                self._free(name, task_id)
            queued = self.waiting.requeue(task)
        else:
            queued = self.waiting.push(task)
        if queued:
            self._wake.set()

    async def cancel(self, task_id: str) -> str:
        """'removed' when it was waiting here (the caller records the cancel); else where it is
        handled: the endpoint holding it is asked to cancel, or 'unknown'."""
        await self.start()
        if self.waiting.remove(task_id):
            # Waiting here: the cancel's decision is to remove it (done); the ingress records it.
            return cancel.decide(cancel.REQUESTED, cancel.Where.WAITING).answer
        for name, tasks in self.assigned.items():
            if task_id in tasks:
                with contextlib.suppress(Exception):
                    return await self.handles[name].cancel(task_id)
        return cancel.UNKNOWN

    async def queue_info(
        self, task_ids: list[str], running: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        await self.start()
        self.book.keep_only({t for tasks in self.assigned.values() for t in tasks})
        takers = sum(1 for ld in self.loads.values() if ld.connected and not ld.draining)
        return self.book.estimate(
            task_ids, self.waiting.place, running=set(running or ()), parallelism=takers,
            now=time.monotonic(),
        )

    async def stats(self) -> dict[str, Any]:
        await self.start()
        return {
            "waiting": len(self.waiting),
            #: waiting tasks per tenant (TENANT_MAX_WAITING; tenants with none omitted)
            "tenants": self.waiting.counts(),
            "dispatched_total": self.dispatched_total,
            "endpoints": {
                name: {
                    "connected": ld.connected,
                    "queue_remaining": ld.queue_remaining,
                    "foreign_queue": ld.foreign,
                    "inflight": len(self.assigned.get(name, ())),
                    "draining": ld.draining,
                    "node_info_digest": ld.node_info_digest,
                    "dispatch_stream": self.streams.uses(name),  # else it is called
                }
                for name, ld in self.loads.items()
            },
        }

    # --- calls from endpoints ---------------------------------------------------------------

    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None:
        load = self.loads.get(name)
        if load is None:
            return
        was = load.connected
        load.connected = bool(status.get("connected"))
        # A status is a reading from the past: keep only what others put in ComfyUI's queue;
        # our own prompts there are counted live in `assigned`.
        load.foreign = int(status.get("foreign_queue") or 0)
        workflows = status.get("workflows")
        load.workflows = frozenset(workflows) if workflows is not None else None
        self.node_info.observe(name, load, status.get("node_info_digest"))
        if "models" in status:  # models by URL: can it pull them, which it holds
            load.models_route, load.models = status.get("models_route"), frozenset(status["models"] or ())
        if load.connected and not was or load.load < self.settings.endpoint_queue_depth:
            self._wake.set()

    async def node_catalog(self, digest: str) -> dict[str, Any] | None:
        return await self.node_info.catalog(digest, router_nodes.reporting(self.loads, digest))

    def _free(self, name: str, task_id: str) -> None:
        tasks = self.assigned.get(name)
        if tasks is not None and task_id in tasks:
            tasks.discard(task_id)
            self.book.dropped(task_id)
            self.loads[name].inflight = len(tasks)
            self._wake.set()

    # --- the log's notices: the one path by which a slot becomes free ---------------------------

    def _on_ended(self, task_id: str, endpoint: str | None, _webhook_to: str | None) -> None:
        """A task's end was committed (by an endpoint, the ingress, anyone): the endpoint it ran
        on has room again. One notice from the log, where the endpoint used to make a Ray call."""
        self.book.ended(task_id, time.monotonic())
        self.streams.forget(task_id)
        if endpoint is not None and endpoint in self.assigned:
            self._free(endpoint, task_id)
        else:
            for name in list(self.assigned):
                self._free(name, task_id)

    def _catch_up_ended(self) -> None:
        self._spawn(self._free_ended())

    async def _free_ended(self) -> None:
        """Listening (re)started: free the slots of tasks that ended while no notice could
        arrive (without this an endpoint would look busy with them for good)."""
        held = [(name, t) for name, tasks in self.assigned.items() for t in tasks]
        if not held:
            return
        try:
            ended = await self.log.ended_among([t for _, t in held])
        except Exception:
            log.warning("catching up with ended tasks failed", exc_info=True)
            return
        for name, task_id in held:
            if task_id in ended:
                self._free(name, task_id)

    # --- loops ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        depth = self.settings.endpoint_queue_depth
        batches: dict[str, list[WaitingTask]] = {}
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The endpoints with room, once per pass (nothing else changes a load until the
            # pass ends: it does not yield): each decision tries up to 64 waiting tasks against
            # these only, and drops an endpoint once it is full. Trying them against every
            # endpoint cost milliseconds at 1,024 endpoints; pick_endpoint skips the others.
            room: list[routing.EndpointLoad] = []
            for n, ld in self.loads.items():
                if ld.connected and not ld.draining:
                    ld.inflight = len(self.assigned[n])
                    if ld.load < depth:
                        room.append(ld)
            while room and len(self.waiting):
                chosen: list[routing.EndpointLoad] = []

                def fits(item: WaitingTask) -> bool:
                    ep = routing.pick_endpoint(
                        room, depth, self.rng, workflow=item.workflow, labels=item.labels,
                    )
                    if ep is None:
                        return False
                    chosen.append(ep)
                    return True

                # The fair share's choice: its tenant is charged one dispatch.
                item = self.waiting.next(fits)
                if item is None:
                    break
                ep = chosen[-1]
                self.assigned[ep.name].add(item.task_id)
                self.book.dispatched(item.task_id, ep.name, item.workflow, time.monotonic())
                ep.inflight = len(self.assigned[ep.name])
                if ep.load >= depth:
                    room.remove(ep)
                self.dispatched_total += 1
                batches.setdefault(ep.name, []).append(item)
            # One call per endpoint for everything decided in this pass.
            for name, items in batches.items():
                self._spawn(self._send(name, items))
            batches = {}

    async def _send(self, name: str, items: list[WaitingTask]) -> None:
        # The states their queued notices carried spare the endpoint a read each.
        states = [self.log.queued_states.take(i.task_id) for i in items]
        ids = [i.task_id for i in items]
        for task_id in ids:
            hop_trace.mark("router.call", task_id)
        if self.streams.uses(name):  # its stream: half a call's cost (actors/router_streams.py)
            self.streams.put(name, items, list(zip(ids, states, strict=True)))
            return
        try:
            results = await self.handles[name].dispatch_many(ids, states)  # KeyError: removed
        except Exception:
            log.warning("dispatch of %d task(s) to %s failed", len(items), name, exc_info=True)
            results = [ports.RETRY] * len(items)
        self._settle(name, items, results)

    async def dispatch_feed(self, name: str) -> AsyncIterator[list[router_streams.Item]]:
        feed = self.streams.open(name)
        try:
            while (batch := await feed.get()) is not None:
                yield batch
        finally:
            self.streams.closed(name, feed)

    async def dispatch_results(self, name: str, task_ids: list[str], results: list[str]) -> None:
        items, kept = self.streams.answered(name, task_ids, results)
        self._settle(name, items, kept)

    def _settle(self, name: str, items: list[WaitingTask], results: list[str]) -> None:
        """Answers for tasks handed out: refused is dropped, retry waits again (its endpoint
        counts as disconnected until its next status)."""
        for item, result in zip(items, results, strict=True):
            if result == ports.ACCEPTED:
                continue
            self.assigned.get(name, set()).discard(item.task_id)
            self.book.dropped(item.task_id)
            if result == ports.RETRY:
                if name in self.loads:
                    self.loads[name].connected = False
                self.waiting.requeue(item)
            else:
                self.waiting.released(item.task_id)
        self._wake.set()

    async def _scan_loop(self) -> None:
        """Queued tasks are notified best effort; this scan of the log picks up any notice that
        was lost (a router restart in between, a listener reconnecting). A task the log says
        waits but an endpoint holds here was requeued (its notice lost) once it was handed out
        longer ago than TAKEN_MEMORY_S (by then its dispatch is recorded): its slot is free."""
        while True:
            await asyncio.sleep(SCAN_S)
            self.waiting.forget_old()
            try:
                rows = await self.log.queued_tasks()
                for name, item in self.streams.unheard({row[0] for row in rows}):
                    # Put on a stream, never taken: out again (the scan below would
                    # skip it as handed out lately).
                    self._free(name, item.task_id)
                    self.waiting.requeue(item)
                    self._wake.set()
                for row in rows:
                    task = router_waiting.from_row(row)
                    if task.task_id in self.waiting or self.waiting.lately_handed_out(task.task_id):
                        continue
                    for name in list(self.assigned):
                        self._free(name, task.task_id)
                    if self.waiting.push(task):
                        self._wake.set()
            except Exception:
                log.debug("queued-task scan failed", exc_info=True)

    async def _heartbeat_loop(self) -> None:
        while True:
            metrics.router_waiting(len(self.waiting))
            await asyncio.gather(
                *(self._beat(name) for name in list(self.handles)), return_exceptions=True
            )
            await asyncio.sleep(max(HEARTBEAT_S, len(self.handles) / HEARTBEAT_MAX_CALLS_S))

    async def _beat(self, name: str) -> None:
        handle = self.handles.get(name)
        if handle is None:
            return
        try:
            status = await asyncio.wait_for(handle.status(), HEARTBEAT_TIMEOUT_S)
        except Exception:
            if name in self.loads:
                self.loads[name].connected = False
            return
        await self.endpoint_status(name, status)
