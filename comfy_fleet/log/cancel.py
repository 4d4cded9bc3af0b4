"""A cancel, decided in one place: given a task's state and where the task is, what happens.

Pure: no I/O, no clock, no Ray. The places that meet a cancel only find out where the task is
and perform what ``decide`` answers:

==================  ==============================================  ===========================
where the task is   what happens (``Action``)                       recorded once it is done
==================  ==============================================  ===========================
``WAITING``         the router removes it from its queue (or the    ``cancelled`` (``router``)
                    endpoint handed it declines it)
``COMFYUI_QUEUE``   deleted from ComfyUI's queue; ended once        ``cancelled``
                    ComfyUI shows it never ran                      (``comfyui_queue``)
``RUNNING``         interrupted by prompt_id; its interruption      ``cancelled`` (``running``)
                    ends it
``STORING``         left to finish: its success folds into          nothing (the fold decides)
                    ``cancelled``, with its outputs, and no
                    success webhook goes out
``LOST``            its prompt is gone from ComfyUI: it ends        ``cancelled`` (``endpoint``)
                    instead of going back to the router
``ENDED``           nothing: the task keeps its end                 nothing
==================  ==============================================  ===========================

The ingress records the request first (``request``: ``task.cancel_requested``, once), then asks
the router, which removes a waiting task or hands the cancel to the endpoint holding it; the
answers they give back are the ``Decision.answer`` strings. An end seen while a cancel is asked
for (a success, or an interruption) ends the task cancelled (``ends_cancelled``): this module
imports only the events, so the fold (``comfy_fleet.log.task_state``) asks it too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from comfy_fleet.log import events


class CancelState(Protocol):
    """What a cancel needs of a task's state (``task_state.TaskState`` has both)."""

    @property
    def is_final(self) -> bool: ...

    @property
    def cancel_requested(self) -> bool: ...


class Where(enum.Enum):
    """Where a task is when its cancel reaches it; the value is ``task.cancelled``'s ``where``."""

    #: not dispatched: in the router's queue, or being handed out
    WAITING = "router"
    #: posted to ComfyUI, pending in its queue
    COMFYUI_QUEUE = "comfyui_queue"
    #: running in ComfyUI
    RUNNING = "running"
    #: ended in ComfyUI; its outputs are being stored
    STORING = "storing"
    #: its prompt is gone from ComfyUI (lost, never reached it, endpoint away)
    LOST = "endpoint"
    #: the task has ended
    ENDED = "ended"


class Action(enum.Enum):
    """What the place holding the task does; the value is the answer given back."""

    #: the router drops it from its queue; the ingress records it cancelled
    REMOVE = "removed"
    #: the endpoint deletes it from ComfyUI's queue and records it cancelled
    DELETE_FROM_QUEUE = "cancelled"
    #: the endpoint interrupts it; the interruption ends it cancelled
    INTERRUPT = "interrupting"
    #: nothing to undo: record the end now
    END = "ended"
    #: let it finish; the fold ends it cancelled
    LET_FINISH = "storing"
    #: nothing: it has ended, or no cancel was asked for
    NOTHING = "nothing"


#: Answers of a place that could not act: the task is not there (``UNKNOWN``), or ComfyUI did not
#: answer (``UNREACHABLE``; the request stays recorded, so the task's end decides).
UNKNOWN, UNREACHABLE = "unknown", "unreachable"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: what to append once the action is done (empty: nothing)
    record: tuple[events.Event, ...] = ()

    @property
    def answer(self) -> str:
        """What the place answers its caller (the router's and the endpoint's ``cancel``)."""
        return self.action.value


_ACTIONS: dict[Where, Action] = {
    Where.WAITING: Action.REMOVE,
    Where.COMFYUI_QUEUE: Action.DELETE_FROM_QUEUE,
    Where.RUNNING: Action.INTERRUPT,
    Where.STORING: Action.LET_FINISH,
    Where.LOST: Action.END,
    Where.ENDED: Action.NOTHING,
}
#: Where the action itself ends the task, so its end is recorded as a cancel there.
_RECORDED = frozenset({Where.WAITING, Where.COMFYUI_QUEUE, Where.RUNNING, Where.LOST})


class _Requested:
    """The state as the router and the endpoint see it: they are asked to cancel only after the
    ingress recorded the request, and an ended task is not theirs any more."""

    is_final = False
    cancel_requested = True


#: For a place that acts on a cancel the ingress has recorded and holds no state of its own.
REQUESTED: CancelState = _Requested()


def request(s: CancelState) -> list[events.Event]:
    """Record the request (once): ``task.cancel_requested`` unless the task ended or has one."""
    if s.is_final or s.cancel_requested:
        return []
    return [events.TaskCancelRequested()]


def decide(s: CancelState, where: Where) -> Decision:
    """What happens to the task ``s`` found at ``where`` (the module docstring's table)."""
    if s.is_final or not s.cancel_requested:
        return Decision(Action.NOTHING)
    if where in _RECORDED:
        return Decision(_ACTIONS[where], (events.TaskCancelled(where=where.value),))
    return Decision(_ACTIONS[where])


def ends_cancelled(s: CancelState) -> bool:
    """A prompt's end (its success, or an interruption) reached while a cancel is asked for ends
    the task cancelled."""
    return s.cancel_requested
