"""The webhook dispatcher's part for batches: recording a batch's completion once, and
delivering its one `batch.completed` webhook through the same outbox as task ends.

The appending statement of each end of a batch's task notifies the batch (`batch_tasks_ended_v1`,
on commit). On it the dispatcher reads the batch's tasks' counts; when none is open it records
`batch.completed` at the batch stream's next seq: when the last tasks end at once on several
endpoints, each notice leads to a check, and the seq is taken once (a loser re-reads the
stream and finds the batch completed). A notice lost while the dispatcher restarts is caught
up by a scan of running batches none of whose tasks is open. The delivery is a key `batch:<id>`
in the dispatcher's slots; its tries (actors/webhook_tries.py, through `BatchOutbox`) are
events of the batch's stream, its `webhook-id` derives from the seq of `batch.completed`
(stable for the batch's end).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from comfy_fleet import errors
from comfy_fleet.batches import batch_state
from comfy_fleet.batches.batch_state import BatchState
from comfy_fleet.delivery.slots import receiver_of
from comfy_fleet.log import events, task_state

log = logging.getLogger("comfy_fleet.webhooks")

#: The prefix of a batch's key in the dispatcher's delivery slots (task keys are uuids).
BATCH_KEY = "batch:"
#: Attempts at recording a batch event whose seq another writer took meanwhile.
APPEND_ATTEMPTS = 8
#: Running batches checked per scan for a completion whose notice was lost.
SCAN_LIMIT = 500


def batch_key(batch_id: str) -> str:
    return BATCH_KEY + batch_id


async def complete_if_done(log_: Any, batch_id: str) -> BatchState | None:
    """Record `batch.completed` when every task of the batch has ended (once: the stream's seq
    decides between concurrent deciders). Returns the batch's state when it is completed."""
    for _ in range(APPEND_ATTEMPTS):
        # The counts first: while the batch runs (most notices) that one query is all it costs.
        counts = batch_state.full_counts(await log_.batch_counts(batch_id))
        if any(counts[s] for s in batch_state.STATUSES if s not in task_state.FINAL_STATUSES):
            return None
        state: BatchState = await log_.get_batch(batch_id)
        if state.end_seq is not None:
            return state
        if not batch_state.all_ended(state, counts):
            return None
        last_end = await log_.batch_last_end(batch_id)
        finished = (last_end or state.updated_at).isoformat()
        try:
            return await log_.append_batch_events(
                batch_id, state.seq,
                [events.BatchCompleted(finished_at=finished, counts=counts)], state,
            )
        except errors.ConcurrencyConflict:
            continue
    raise errors.ConcurrencyConflict(f"batch {batch_id}: could not record its completion")


class BatchOutbox:
    """Batch completions, as `WebhookTries` delivers them: the body is the batch's view."""

    kind = "batch"

    def __init__(self, log: Any) -> None:
        self.log = log

    async def state(self, batch_id: str) -> BatchState:
        state: BatchState = await self.log.get_batch(batch_id)
        return state

    async def body(self, state: BatchState) -> bytes:
        view = batch_state.to_view(state, await self.log.batch_counts(state.batch_id))
        return orjson.dumps({"type": "batch.completed", "batch": view})

    async def append(self, batch_id: str, state: BatchState, new: list[events.Event]) -> BatchState:
        appended: BatchState = await self.log.append_batch_events(batch_id, state.seq, new, state)
        return appended

    async def tail(self, batch_id: str, end_seq: int) -> list[events.StoredEvent]:
        stream: list[events.StoredEvent] = await self.log.read_batch(batch_id)  # a few events
        return stream


class BatchDeliveries:
    """Mixed into `WebhookDispatcher` (its log, slots and background tasks)."""

    log: Any
    _bg: set[asyncio.Task[Any]]

    if TYPE_CHECKING:

        def _ensure(self, task_id: str, receiver: str) -> None: ...

    def _batches_init(self) -> None:
        self.batch_outbox = BatchOutbox(self.log)
        #: batches with a completion check running, and those to check again after it
        self._checking: dict[str, asyncio.Task[None]] = {}
        self._recheck: set[str] = set()

    async def _start_batches(self) -> None:
        await self.log.listen_batch_task_ended(self._on_batch_task_ended, self._catch_up_batches)

    def _on_batch_task_ended(self, batch_id: str) -> None:
        """One of the batch's tasks ended: check it (one check per batch at a time; a notice
        during a check makes it run once more, so the last end is always looked at after its
        commit)."""
        if batch_id in self._checking:
            self._recheck.add(batch_id)
            return
        task = asyncio.create_task(self._check_batch(batch_id))
        self._checking[batch_id] = task

    async def _check_batch(self, batch_id: str) -> None:
        try:
            while True:
                self._recheck.discard(batch_id)
                try:
                    state = await complete_if_done(self.log, batch_id)
                except errors.BatchNotFound:
                    return
                except Exception:
                    log.warning("completion check of batch %s failed", batch_id, exc_info=True)
                    return  # the next notice or scan comes back to it
                if state is not None:
                    if state.webhook == task_state.WEBHOOK_PENDING and state.callback_url:
                        self._ensure(batch_key(batch_id), receiver_of(state.callback_url))
                    return
                if batch_id not in self._recheck:
                    return
        finally:
            self._checking.pop(batch_id, None)

    def _catch_up_batches(self) -> None:
        task = asyncio.create_task(self._scan_batches())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _scan_batches(self) -> None:
        """Complete the batches whose last notice was lost; queue the batch webhooks pending."""
        try:
            for batch_id in await self.log.batches_to_complete(SCAN_LIMIT):
                self._on_batch_task_ended(batch_id)
            for batch_id, callback_url in await self.log.pending_batch_webhooks():
                self._ensure(batch_key(batch_id), receiver_of(callback_url or ""))
        except errors.Unavailable:
            pass
        except Exception:
            log.exception("batch outbox scan failed")
