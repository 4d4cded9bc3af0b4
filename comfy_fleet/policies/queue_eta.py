"""Queue position and ETA of a task (CONTRACT §7.6): pure bookkeeping of what the router handed
to each endpoint, in dispatch order, and of recent run times per workflow. No I/O, no clock of
its own (the caller passes `now`, monotonic seconds).

The fleet's dispatch order: the tasks handed to endpoints and not known to run come first, by
the order they were handed out, then the waiting tasks in the fair share's order. A task's
`position` is its place in that order (1 = next); a running task's is 0. The router cannot see
which of an endpoint's prompts ComfyUI has started, so one it was not told runs counts as
queued: positions are an estimate, never below the truth.

ETA: a dispatched task waits for the prompts ahead of it on its own endpoint (ComfyUI runs one
at a time); a waiting task for the work ahead of it in the whole fleet, shared by the connected
endpoints. A run time is learnt as end − start, where start is the later of the dispatch and the
previous end on that endpoint (when a serial ComfyUI could first have started it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

#: Run times kept per workflow (the moving window).
WINDOW = 20
#: The run time assumed of a workflow never seen to end (and while nothing has ended at all).
DEFAULT_RUN_S = 10.0


class RunTimes:
    """A moving window of run times (seconds) per workflow."""

    def __init__(self, window: int = WINDOW, default_s: float = DEFAULT_RUN_S) -> None:
        self.window = window
        self.default_s = default_s
        self._runs: dict[str, deque[float]] = {}

    def observe(self, workflow: str | None, seconds: float) -> None:
        runs = self._runs.setdefault(workflow or "", deque(maxlen=self.window))
        runs.append(max(0.0, seconds))

    def typical(self, workflow: str | None) -> float:
        """The mean of the workflow's window; else the mean over all workflows; else the
        default."""
        runs = self._runs.get(workflow or "")
        if runs:
            return sum(runs) / len(runs)
        every = [s for r in self._runs.values() for s in r]
        return sum(every) / len(every) if every else self.default_s


@dataclass
class Flight:
    """A task handed to an endpoint and not ended."""

    task_id: str
    endpoint: str
    workflow: str | None
    dispatched_at: float
    order: int


@dataclass(frozen=True)
class Waiting:
    """A waiting task as the estimate needs it: its fair-share position and workflow."""

    position: int
    workflow: str | None


class QueueBook:
    """The router's record of what each endpoint holds, in dispatch order, and its run times."""

    def __init__(self, runs: RunTimes | None = None) -> None:
        self.runs = runs or RunTimes()
        self.flights: dict[str, Flight] = {}
        #: endpoint → when its last prompt ended (monotonic seconds)
        self.last_end: dict[str, float] = {}
        self._order = 0

    def dispatched(self, task_id: str, endpoint: str, workflow: str | None, now: float) -> None:
        self._order += 1
        self.flights[task_id] = Flight(task_id, endpoint, workflow, now, self._order)

    def dropped(self, task_id: str) -> None:
        """The endpoint did not keep it (refused, retried, requeued): no run time learnt."""
        self.flights.pop(task_id, None)

    def ended(self, task_id: str, now: float) -> None:
        """Its end was recorded: learn its run time; its endpoint is free from `now`."""
        flight = self.flights.pop(task_id, None)
        if flight is None:
            return
        self.runs.observe(flight.workflow, now - self._start(flight))
        self.last_end[flight.endpoint] = now

    def keep_only(self, held: Collection[str]) -> None:
        """Forget flights no endpoint holds any more (e.g. a removed endpoint's)."""
        for task_id in [t for t in self.flights if t not in held]:
            del self.flights[task_id]

    def _start(self, flight: Flight) -> float:
        return max(flight.dispatched_at, self.last_end.get(flight.endpoint, flight.dispatched_at))

    def left_s(self, flight: Flight, now: float) -> float:
        """Estimated seconds until this flight ends (it may already run)."""
        return max(0.0, self.runs.typical(flight.workflow) - max(0.0, now - self._start(flight)))

    def estimate(
        self,
        task_ids: Iterable[str],
        waiting: Callable[[str], Waiting | None],
        *,
        running: Collection[str] = (),
        parallelism: int,
        now: float,
    ) -> dict[str, dict[str, float | int]]:
        """`{task_id: {"position", "eta_s"}}` for each task it knows (a flight or one `waiting`
        answers for); `running` are tasks known to run (position 0, eta_s the time left).
        `parallelism` is the number of endpoints taking work (at least 1 is assumed). A task
        neither in flight nor waiting here is left out (the caller shows no estimate)."""
        ordered = sorted(self.flights.values(), key=lambda f: f.order)
        queued = [f for f in ordered if f.task_id not in running]
        rank = {f.task_id: i + 1 for i, f in enumerate(queued)}
        share = max(1, parallelism)
        fleet_work = sum(self.left_s(f, now) for f in ordered)
        answer: dict[str, dict[str, float | int]] = {}
        for task_id in task_ids:
            flight = self.flights.get(task_id)
            if flight is not None and task_id in running:
                answer[task_id] = {"position": 0, "eta_s": _round(self.left_s(flight, now))}
            elif flight is not None:
                ahead = [f for f in ordered if f.endpoint == flight.endpoint and f.order < flight.order]
                eta = sum(self.left_s(f, now) for f in ahead)
                answer[task_id] = {"position": rank[task_id], "eta_s": _round(eta)}
            elif (w := waiting(task_id)) is not None:
                ahead_s = (w.position - 1) * self.runs.typical(w.workflow)
                answer[task_id] = {
                    "position": len(queued) + w.position,
                    "eta_s": _round((fleet_work + ahead_s) / share),
                }
        return answer


def _round(seconds: float) -> float:
    return round(max(0.0, seconds), 1)
