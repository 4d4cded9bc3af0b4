"""An in-flight prompt and its phase: where one prompt we gave ComfyUI stands, on this endpoint.

Pure: no I/O, no clock of its own (callers pass `now`). The phase replaces three flags
(posted, started, finishing) that five concurrent activities (dispatch, the socket, the
reconciler, the output storer, cancel) used to keep in step:

    POSTING ──posted──▶ QUEUED ──started──▶ RUNNING ──store──▶ STORING ──end──▶ ENDED
       │                  │                                      │
       └──────started─────┼──────────────────────────────────────┘ (storing_failed: ▶ RUNNING)
                          └──store──▶ STORING    (any phase ──end──▶ ENDED)

- POSTING: `task.dispatched` is recorded, POST /prompt has not answered. The reconciler leaves
  it alone (it may not be in ComfyUI yet, and is not lost).
- QUEUED: ComfyUI has it (POST answered, the answer was lost, or we rebuilt it from the log).
- RUNNING: ComfyUI said `execution_start` (or its end was seen and then storing failed).
- STORING: its end was seen; outputs are being fetched and its end recorded. Nobody else may
  finish it; cancel leaves it to finish.
- ENDED: let go of (ended, requeued, abandoned); no transition leaves it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from comfy_fleet.comfy import history


class Phase(enum.Enum):
    POSTING = "posting"
    QUEUED = "queued"
    RUNNING = "running"
    STORING = "storing"
    ENDED = "ended"


#: phases in which ComfyUI holds the prompt and nobody is finishing it
WATCHED = frozenset({Phase.QUEUED, Phase.RUNNING})
#: phases from which the prompt's end may still be taken up
FINISHABLE = frozenset({Phase.POSTING, Phase.QUEUED, Phase.RUNNING})


class IllegalTransition(Exception):
    """A transition the phase does not allow (a bug: callers check `can_finish` first)."""


def posted(phase: Phase) -> Phase:
    """POST /prompt answered (or may have reached ComfyUI): it is ComfyUI's now. A prompt whose
    frames came before the answer has moved on already and keeps its phase."""
    return Phase.QUEUED if phase is Phase.POSTING else phase


def started(phase: Phase) -> Phase:
    """ComfyUI said `execution_start` (a frame may come before POST /prompt answers)."""
    return Phase.RUNNING if phase in (Phase.POSTING, Phase.QUEUED) else phase


def store(phase: Phase) -> Phase:
    """Its end was seen (socket or history): the one taking it up moves it to STORING."""
    if phase not in FINISHABLE:
        raise IllegalTransition(f"{phase.value} → storing")
    return Phase.STORING


def storing_failed(phase: Phase) -> Phase:
    """ComfyUI did not answer while its outputs were fetched: back to the reconciler. It ran
    (its end was seen), so it is RUNNING again."""
    if phase is not Phase.STORING:
        raise IllegalTransition(f"{phase.value} → running (storing failed)")
    return Phase.RUNNING


def end(_phase: Phase) -> Phase:
    """Let go of it, from any phase."""
    return Phase.ENDED


@dataclass
class InflightPrompt:
    """One prompt we gave (or are giving) ComfyUI; monotonic-clock times in seconds."""

    task_id: str
    prompt_id: str
    phase: Phase = Phase.POSTING
    #: when we minted it (for the run-time metric)
    dispatched_at: float = 0.0
    #: when POST /prompt answered (0.0 until it did; a socket silent since then is a zombie)
    posted_at: float = 0.0
    #: the last frame about it (the reconciler looks at prompts quiet for a while)
    last_frame: float = 0.0
    #: when the last progress event was recorded (progress is thinned out)
    last_progress_at: float = 0.0
    #: times its outputs could not be fetched because ComfyUI did not answer
    fetch_failures: int = 0
    #: the socket life (`Connection.reconnects`) on which its `execution_start` came, None
    #: until then: its frames are whole only if they all came on that one socket
    frames_from: int | None = None
    #: its `executed` outputs by node, as history's `outputs` records them
    outputs: dict[str, Any] = field(default_factory=dict)
    #: `execution_success` came on the socket of `frames_from`
    succeeded: bool = False

    @property
    def watched(self) -> bool:
        """In ComfyUI's hands and nobody finishing it: the reconciler may look it up."""
        return self.phase in WATCHED

    @property
    def ran(self) -> bool:
        """ComfyUI said it started (RUNNING), or its end was seen (STORING)."""
        return self.phase in (Phase.RUNNING, Phase.STORING)

    @property
    def can_finish(self) -> bool:
        return self.phase in FINISHABLE

    def on_posted(self, now: float, *, answered: bool) -> None:
        self.phase = posted(self.phase)
        self.posted_at = now
        if answered:
            self.last_frame = now

    def on_started(self, socket_life: int | None = None) -> None:
        self.phase = started(self.phase)
        if socket_life is not None and self.frames_from is None:
            self.frames_from = socket_life

    def on_executed(self, socket_life: int, node: str, output: dict[str, Any] | None) -> None:
        """A node's output (frames from another socket than its start's are not whole)."""
        if self.frames_from == socket_life and output is not None:
            self.outputs[node] = output

    def on_succeeded(self, socket_life: int) -> None:
        if self.frames_from == socket_life:
            self.succeeded = True

    def outcome_from_frames(self, socket_life: int) -> tuple[history.Outcome, dict[str, Any]] | None:
        """Its end as its history entry would tell it (the outcome, and an entry holding its
        `outputs`), read from its frames alone; None unless every frame from its
        `execution_start` to its `execution_success` came on the socket still open (ComfyUI
        drops the frames sent while no socket is registered and replays none), in which case
        its history entry must be read."""
        if not self.succeeded or self.frames_from != socket_life:
            return None
        outputs = dict(self.outputs)
        return history.Outcome(history.SUCCESS, history.output_files(outputs)), {"outputs": outputs}

    def on_store(self) -> None:
        self.phase = store(self.phase)

    def on_storing_failed(self) -> None:
        self.phase = storing_failed(self.phase)

    def on_end(self) -> None:
        self.phase = end(self.phase)


class InflightTable:
    """The prompts in flight on one endpoint, by prompt_id and by task_id."""

    def __init__(self) -> None:
        self.by_prompt: dict[str, InflightPrompt] = {}
        self.by_task: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.by_prompt)

    def add(self, item: InflightPrompt) -> None:
        self.by_prompt[item.prompt_id] = item
        self.by_task[item.task_id] = item.prompt_id

    def get(self, prompt_id: str | None) -> InflightPrompt | None:
        return self.by_prompt.get(prompt_id) if prompt_id is not None else None

    def of_task(self, task_id: str) -> InflightPrompt | None:
        return self.get(self.by_task.get(task_id))

    def holds(self, item: InflightPrompt) -> bool:
        return self.by_prompt.get(item.prompt_id) is item

    def remove(self, prompt_id: str) -> InflightPrompt | None:
        """Forget it; its phase becomes ENDED."""
        item = self.by_prompt.pop(prompt_id, None)
        if item is not None:
            item.on_end()
            if self.by_task.get(item.task_id) == prompt_id:
                del self.by_task[item.task_id]
        return item

    def watched(self) -> int:
        """Prompts in ComfyUI's queue by our count (posted, not being finished)."""
        return sum(1 for i in self.by_prompt.values() if i.watched)

    def quiet(self, now: float, quiet_for: float, *, force: bool) -> list[InflightPrompt]:
        """The watched prompts with no frame for `quiet_for` seconds (all of them if `force`)."""
        return [
            i for i in self.by_prompt.values()
            if i.watched and (force or now - i.last_frame >= quiet_for)
        ]
