"""PromptEnds: how an endpoint records what became of its prompts (started, progress, the end,
a requeue) and lets go of them. The decisions are `comfy_fleet.prompts.decisions`; this module
performs them: reads the state, appends, stores outputs, hands the host to the janitor."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

from actors import metrics
from comfy_fleet import errors, hop_trace
from comfy_fleet.comfy import history
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.log import cancel, events
from comfy_fleet.prompts import decisions
from comfy_fleet.prompts.inflight import InflightPrompt, InflightTable, Phase
from comfy_fleet.prompts.janitor import HostJanitor
from comfy_fleet.prompts.ledger import TaskLedger
from comfy_fleet.prompts.outputs import OutputStorer

log = logging.getLogger("comfy_fleet.endpoint")

#: How long we keep re-reading a history entry that is not there yet after completion.
HISTORY_GRACE_S = 5.0

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class RouterPort(Protocol):
    async def endpoint_status(self, name: str, status: dict[str, Any]) -> None: ...
    def dispatch_feed(self, name: str) -> AsyncIterator[list[tuple[str, Any]]]: ...
    async def dispatch_results(
        self, name: str, task_ids: list[str], results: list[str]
    ) -> None: ...


def ctx(endpoint: str, task_id: str, prompt_id: str | None, **more: Any) -> dict[str, Any]:
    """Structured log fields: with Ray's JSON logging each becomes a key of the line."""
    # "task_id" is taken by Ray (its own task id) in its JSON lines, so ours is "fleet_task_id".
    return {"endpoint": endpoint, "fleet_task_id": task_id, "prompt_id": prompt_id, **more}


async def safe(coro: Awaitable[Any]) -> None:
    """Await a notification whose failure must not stop the caller (it is logged)."""
    try:
        await coro
    except Exception:
        log.warning("notification failed", exc_info=True)


class PromptEnds:
    def __init__(
        self, name: str, *, ledger: TaskLedger, table: InflightTable, client: ComfyClient,
        storer: OutputStorer, janitor: HostJanitor, router: RouterPort, spawn: Spawn,
    ) -> None:
        self.name = name
        self.ledger = ledger
        self.table = table
        self.client = client
        self.storer = storer
        self.janitor = janitor
        self.router = router
        self.spawn = spawn
        # No call tells the router a slot is free: every end and requeue is a notice of the log
        # (tasks_ended_v1, tasks_queued_v1), whoever recorded it.

    # --- while it runs ----------------------------------------------------------------------

    async def record_started(self, item: InflightPrompt) -> None:
        await self.ledger.decide(
            item.task_id, lambda s: decisions.started(s, prompt_id=item.prompt_id)
        )

    async def record_progress(
        self, item: InflightPrompt, value: int, maximum: int, node: str | None
    ) -> None:
        await self.ledger.decide(
            item.task_id,
            lambda s: decisions.progress(
                s, prompt_id=item.prompt_id, value=value, maximum=maximum, node=node
            ),
        )

    # --- its end ----------------------------------------------------------------------------

    async def collect(self, item: InflightPrompt) -> None:
        """Completion seen on the socket: read the history entry (retrying briefly if empty)."""
        deadline = time.monotonic() + HISTORY_GRACE_S
        while True:
            try:
                entry = await self.client.history(item.prompt_id)
            except errors.EndpointUnavailable:
                return  # the reconciler will come back to it
            result = history.outcome(entry)
            if result.kind != history.UNKNOWN or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if result.kind != history.UNKNOWN:
            await self.finish(item, result, entry)

    async def finish(
        self, item: InflightPrompt, result: history.Outcome, entry: dict[str, Any] | None = None
    ) -> None:
        """Take up the prompt's seen end (once: the socket and the reconciler may both come):
        store its outputs and record its end, then let go of it. When ComfyUI does not answer
        meanwhile, the prompt goes back to the reconciler."""
        if not item.can_finish or not self.table.holds(item):
            return
        item.on_store()  # before any await
        # From the log when the cache lost it: an input left on the host is disk that never
        # comes back.
        try:
            state = await self.ledger.state(item.task_id)
            inputs, workflow = list(state.inputs), state.workflow
        except errors.FleetError:
            inputs, workflow = [], "unknown"
        metrics.comfyui_run(workflow, time.monotonic() - item.dispatched_at)
        try:
            ended = await self._record_end(item, result, workflow)
        except errors.EndpointUnavailable as exc:
            log.warning(
                "endpoint %s: outputs of %s not fetched (%s); will reconcile",
                self.name, item.prompt_id, exc.message,
                extra=ctx(self.name, item.task_id, item.prompt_id),
            )
            self._back_to_reconciler(item)
            return
        except Exception:
            log.exception("endpoint %s: finishing %s failed; will reconcile", self.name, item.prompt_id)
            self._back_to_reconciler(item)
            return
        self.table.remove(item.prompt_id)
        self.let_go(item.task_id, item.prompt_id, inputs, entry, ended=ended)

    @staticmethod
    def _back_to_reconciler(item: InflightPrompt) -> None:
        if item.phase is Phase.STORING:
            item.on_storing_failed()

    async def _record_end(
        self, item: InflightPrompt, result: history.Outcome, workflow: str
    ) -> bool:
        cancel_requested = False
        if result.kind == history.INTERRUPTED:
            cancel_requested = (await self.ledger.state(item.task_id)).cancel_requested
        ending = decisions.ending(result.kind, cancel_requested=cancel_requested)
        if ending is decisions.Ending.STORE:
            stored_from = time.monotonic()
            try:
                stored = await self.storer.store_all(
                    item.task_id, item.prompt_id, result.files, fetch_failures=item.fetch_failures
                )
            except errors.EndpointUnavailable:
                item.fetch_failures += 1
                raise
            hop_trace.mark("endpoint.stored", item.task_id)
            final = decisions.stored(item.prompt_id, stored.outputs, stored.failures)
            ended = await self.end(item.task_id, item.prompt_id, final, ran=True)
            hop_trace.mark("endpoint.ended", item.task_id)
            metrics.output_store(workflow, time.monotonic() - stored_from)
            return ended
        if ending is decisions.Ending.CANCELLED:
            final = list(cancel.decide(cancel.REQUESTED, cancel.Where.RUNNING).record)
            return await self.end(item.task_id, item.prompt_id, final, ran=True)
        return await self.fail(item.task_id, item.prompt_id, result.error or {}, ran=True)

    def let_go(
        self, task_id: str, prompt_id: str, inputs: list[dict[str, Any]],
        entry: dict[str, Any] | None, *, ended: bool,
    ) -> None:
        """The prompt is no longer ours: clean the host. (Whoever recorded the end, the log's
        notice frees the router's slot.)"""
        self.spawn(self.janitor.after_end(prompt_id, inputs, entry))

    async def fail(
        self, task_id: str, prompt_id: str, error: dict[str, Any], *, ran: bool = False
    ) -> bool:
        """Record the prompt's failure; True when this append ended the task."""
        _, new = await self.ledger.decide(
            task_id, lambda s: decisions.fail(s, prompt_id=prompt_id, error=error, ran=ran)
        )
        if new:
            self.ended(task_id)
        return bool(new)

    async def end(
        self, task_id: str, prompt_id: str, final: list[events.Event], *, ran: bool
    ) -> bool:
        """Record the prompt's end; True when this append ended the task."""
        _, new = await self.ledger.decide(
            task_id, lambda s: decisions.end(s, prompt_id=prompt_id, final=final, ran=ran)
        )
        if new:
            self.ended(task_id)
        return bool(new)

    def ended(self, task_id: str) -> None:
        """We recorded the task's end (the log tells the router and the webhook dispatcher)."""
        state = self.ledger.forget(task_id)
        if state is not None and state.is_final:
            metrics.task_ended(state.workflow, state.status)
            metrics.end_to_end(state.workflow, max(0.0, time.time() - state.created_at.timestamp()))
            log.info(
                "task %s", state.status,
                extra=ctx(self.name, task_id, state.prompt_id, workflow=state.workflow,
                          status=state.status, error_code=(state.error or {}).get("code")),
            )

    async def requeue(self, task_id: str, prompt_id: str, reason: str) -> None:
        """The prompt is gone: the task goes back to the router (or ends cancelled)."""
        state, new = await self.ledger.decide(
            task_id,
            lambda s: decisions.requeue(s, endpoint=self.name, prompt_id=prompt_id, reason=reason),
        )
        self.ledger.forget(task_id)
        if new and state.inputs:
            # The inputs uploaded here are not needed here any more (the staged copies in S3
            # stay for the next attempt, elsewhere).
            self.spawn(self.janitor.remove_uploads(list(state.inputs)))
        if new and isinstance(new[0], events.TaskRequeued):
            log.warning("task requeued: %s", reason, extra=ctx(self.name, task_id, prompt_id))
        elif new:
            self.ended(task_id)
