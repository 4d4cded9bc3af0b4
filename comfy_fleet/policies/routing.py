"""The routing policy, pure: which endpoint gets the next task, and the order tasks wait in.

`pick_endpoint` gives a task to the connected endpoint with the smallest load, where load is the
larger of ComfyUI's own `queue_remaining` and our count of prompts in flight there plus the
prompts of other clients in its queue (`foreign`, from the endpoint's last reading). The
router keeps `queue_remaining` only when it is fresh; its heartbeat readings go to `foreign`,
because a one-second-old queue length would hold back dispatches to a queue that has drained. Endpoints already holding
`depth` prompts are skipped, so a task binds to an endpoint as late as possible. Ties are spread
at random so equal endpoints share the work. A task that needs models given by URL (labels
`model:<sha256>`) goes only to endpoints whose ComfyUI can pull models, and among those with
room, preferably to one that already holds more of its models (then the least loaded). A task
that names model files (labels `file:<folder>/<name>`) goes only to endpoints whose loaders list
every one of them (`model_files`, learnt with the node classes).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from comfy_fleet.workflows import model_files as model_files_module, model_params, raw_graph


@dataclass
class EndpointLoad:
    name: str
    connected: bool = False
    queue_remaining: int = 0
    inflight: int = 0
    #: prompts of other clients in ComfyUI's queue (from the endpoint's last status)
    foreign: int = 0
    draining: bool = False
    labels: frozenset[str] = frozenset()
    #: workflows this endpoint can run (None: not known yet — assume all).
    workflows: frozenset[str] | None = None
    #: node classes its ComfyUI has (None: not known yet — a raw graph waits), and the digest
    #: of the node info they came with (`raw_graph.digest`)
    classes: frozenset[str] | None = None
    node_info_digest: str | None = None
    #: whether its ComfyUI can pull models by URL (None: not known yet), and the sha256s it holds
    models_route: bool | None = None
    models: frozenset[str] = frozenset()
    #: the model files its loaders list, per folder (None: not known yet — a task naming
    #: model files waits)
    model_files: model_files_module.Held | None = None

    @property
    def load(self) -> int:
        return max(self.queue_remaining, self.inflight + self.foreign)

    def can_take(self, workflow: str | None, labels: Iterable[str] = ()) -> bool:
        """Connected, not draining, runs the workflow, and carries every label; a label
        `node:<class>` (a raw graph's) is met by the node classes its ComfyUI reports, and a
        label `file:<folder>/<name>` by a file its loaders list in that folder."""
        if not self.connected or self.draining:
            return False
        if (
            workflow is not None and workflow != raw_graph.WORKFLOW
            and self.workflows is not None and workflow not in self.workflows
        ):
            return False
        wanted = set(labels)
        if any(w.startswith(model_params.LABEL_PREFIX) for w in wanted):
            if not self.models_route:
                return False
            wanted = {w for w in wanted if not w.startswith(model_params.LABEL_PREFIX)}
        classes = raw_graph.classes_of_labels(wanted)
        if classes:
            if self.classes is None or not classes <= self.classes:
                return False
            wanted = {w for w in wanted if not w.startswith(raw_graph.NODE_LABEL_PREFIX)}
        files = model_files_module.needs_of_labels(wanted)
        if files:
            if self.model_files is None or not model_files_module.holds(files, self.model_files):
                return False
            wanted = {w for w in wanted if not w.startswith(model_files_module.LABEL_PREFIX)}
        return wanted <= self.labels


def pick_endpoint(
    endpoints: Iterable[EndpointLoad],
    depth: int,
    rng: random.Random,
    *,
    workflow: str | None = None,
    labels: Iterable[str] = (),
) -> EndpointLoad | None:
    """The endpoint that can take the task, has room, holds most of the task's models (by its
    `model:` labels) and, among those, is the least loaded; or None."""
    labels = tuple(labels)
    needs = model_params.shas_of_labels(labels)
    best: list[EndpointLoad] = []
    best_key = (0, depth)
    for ep in endpoints:
        load = ep.load
        if load >= depth or not ep.can_take(workflow, labels):
            continue
        key = (-len(needs & ep.models), load)
        if not best or key < best_key:
            best, best_key = [ep], key
        elif key == best_key:
            best.append(ep)
    if not best:
        return None
    return best[0] if len(best) == 1 else rng.choice(best)


@dataclass(order=True)
class Waiting:
    """A task waiting in the router: highest priority first, then oldest, then first come."""

    sort_key: tuple[int, float, int]
    task_id: str = field(compare=False)
    workflow: str = field(compare=False)
    labels: tuple[str, ...] = field(compare=False, default=())


class WaitQueue:
    """Priority queue of waiting tasks with O(log n) push/pop and lazy removal (cancel)."""

    def __init__(self) -> None:
        self._heap: list[Waiting] = []
        self._live: dict[str, Waiting] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def push(
        self, task_id: str, priority: int, created_at: float, workflow: str, labels: Iterable[str] = ()
    ) -> bool:
        if task_id in self._live:
            return False
        item = Waiting((-priority, created_at, next(self._counter)), task_id, workflow, tuple(labels))
        self._live[task_id] = item
        heapq.heappush(self._heap, item)
        return True

    def remove(self, task_id: str) -> bool:
        return self._live.pop(task_id, None) is not None

    def pop_first(self, fits: callable) -> Waiting | None:  # type: ignore[valid-type]
        """Pop the first waiting task for which `fits(item)` is true (skipping, not dropping,
        tasks no endpoint can take now — e.g. a workflow only a busy endpoint has)."""
        skipped: list[Waiting] = []
        found: Waiting | None = None
        while self._heap:
            item = heapq.heappop(self._heap)
            if self._live.get(item.task_id) is not item:
                continue  # removed
            if fits(item):
                found = item
                del self._live[item.task_id]
                break
            skipped.append(item)
            if len(skipped) >= 64:
                break  # bound the scan: the rest waits for the next round
        for item in skipped:
            heapq.heappush(self._heap, item)
        return found

    def task_ids(self) -> list[str]:
        return list(self._live)
