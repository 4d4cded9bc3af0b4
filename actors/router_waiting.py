"""The router's waiting tasks: a `FairShare` among tenants, fed by the log, with a short memory
of what was handed out.

A waiting task reaches the router by more than one path (the log's queued notice, its scan of
`queued_tasks()`, its rebuild at start), and one of them can arrive after the task was already
dispatched: `handed_out` remembers each task handed to an endpoint for `memory_s`, so such a late
copy is not queued again as a ghost (it would inflate the waiting counts admission control reads).

The share itself is derived state, like the queue: `rebuild` replays the tenants of the latest
dispatches recorded in the log (`task.dispatched`, in log order) and then queues the waiting
tasks, so a restarted router hands the next slots out as the one before it would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from comfy_fleet.log.event_log import QueuedRow
from comfy_fleet.policies import fair_share, queue_eta
from comfy_fleet.policies.fair_share import WaitingTask


def waiting_task(
    task_id: str, priority: int, created_at: float, workflow: str, labels: Iterable[str],
    tenant: str,
) -> WaitingTask:
    return WaitingTask(
        task_id=task_id, tenant=tenant, priority=priority, created_at=created_at,
        workflow=workflow, labels=tuple(labels or ()),
    )


def from_row(row: QueuedRow) -> WaitingTask:
    """A row of `queued_tasks()`: (task_id, priority, created_at, workflow, labels, tenant)."""
    task_id, priority, created_at, workflow, labels, tenant = row
    return waiting_task(task_id, priority, created_at, workflow, labels, tenant)


def _needs(task: WaitingTask) -> tuple[str | None, tuple[str, ...]]:
    return (task.workflow, task.labels)


class WaitingTasks:
    """What waits for a slot, and which waiting task gets the next one (`next`)."""

    def __init__(
        self,
        weights: Mapping[str, fair_share.Weight] | None = None,
        *,
        memory_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.weights = dict(weights or {})
        self.share = fair_share.FairShare(self.weights)
        self.memory_s = memory_s
        self.clock = clock
        #: task_id → when it was handed to an endpoint (forgotten after `memory_s`)
        self.handed_out: dict[str, float] = {}

    def rebuild(self, dispatched_tenants: Iterable[str], rows: Iterable[QueuedRow]) -> None:
        """The state after the logged dispatches (their tenants, oldest first) with the
        waiting tasks of `rows` queued (tasks handed out lately excepted)."""
        waiting = [from_row(row) for row in rows]
        self.share = fair_share.FairShare.rebuild(
            dispatched_tenants, [t for t in waiting if t.task_id not in self.handed_out],
            self.weights,
        )

    def __len__(self) -> int:
        return len(self.share)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.share

    def task_ids(self) -> list[str]:
        return self.share.task_ids()

    def counts(self) -> dict[str, int]:
        """Waiting tasks per tenant (tenants with none omitted)."""
        return self.share.waiting_counts()

    def place(self, task_id: str) -> queue_eta.Waiting | None:
        """A waiting task's fair-share position (1 = next) and workflow; None if not waiting."""
        position = self.share.position(task_id)
        task = self.share.get(task_id)
        if position is None or task is None:
            return None
        return queue_eta.Waiting(position, task.workflow)

    def lately_handed_out(self, task_id: str) -> bool:
        return task_id in self.handed_out

    def push(self, task: WaitingTask) -> bool:
        """Queue a task unless it waits already or was handed out lately."""
        if task.task_id in self.handed_out:
            return False
        return self.share.push(task)

    def requeue(self, task: WaitingTask) -> bool:
        """Queue again a task its endpoint let go of (a requeue) or could not take (a retry):
        it keeps its place by age. Its earlier dispatch stays charged to its tenant, as the log
        has it."""
        self.handed_out.pop(task.task_id, None)
        return self.share.push(task)

    def released(self, task_id: str) -> None:
        """The endpoint let go of the task: it may be handed out again."""
        self.handed_out.pop(task_id, None)

    def remove(self, task_id: str) -> bool:
        """Take a waiting task out (cancelled); False when it does not wait here."""
        return self.share.remove(task_id) is not None

    def next(self, fits: Callable[[WaitingTask], bool]) -> WaitingTask | None:
        """The task for the next free slot: the fair share's choice among the tasks that
        `fits`; it is charged to its tenant and remembered as handed out. `fits` depends only
        on a task's workflow and labels (what routing reads): tasks needing what one that did
        not fit needed are passed over untried (`FairShare.next`'s `alike`)."""
        task = self.share.next(fits, alike=_needs)
        if task is not None:
            self.handed_out[task.task_id] = self.clock()
        return task

    def forget_old(self) -> None:
        """Forget the tasks handed out longer than `memory_s` ago: by then their dispatch is
        in the log, and a scan finding one waiting means it was requeued."""
        horizon = self.clock() - self.memory_s
        self.handed_out = {t: at for t, at in self.handed_out.items() if at > horizon}
