"""The id of a webhook: one per task end, the same for every try and redelivery of it.

Its own module, free of I/O and imports, so the pure fold (comfy_fleet/log/task_state.py) can
name a task's past webhooks without loading the sender's HTTP client and URL policy.
"""

from __future__ import annotations


def webhook_id(task_id: str, end_seq: int) -> str:
    """The ``webhook-id`` of one task end: the same for every try and redelivery of that end.

    ``end_seq`` is the seq of the event that ended the task, so a later end (none today) would
    get a new id while repeats of this one keep theirs.
    """
    if not task_id or any(c.isspace() or c == "." for c in task_id):
        raise ValueError("task_id must be non-empty, without spaces or dots")
    if end_seq < 1:
        raise ValueError("end_seq must be a positive event seq")
    return f"msg_{task_id}_{end_seq}"
