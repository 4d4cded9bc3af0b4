"""Hop marks: when a task passed each hop of its path, for `bench.latency --hops`.

Off unless the environment names a directory in `COMFY_FLEET_HOP_TRACE` when the process
starts; then `mark(hop, task_id)` appends `<wall time> <hop> <task id>` to `<dir>/<pid>.log`.
Off, a mark costs one comparison: the marks stay in the service's path for good, so the
breakdown is of the code that runs, not of a patched copy.

The marks, in the order a task with a callback passes them (`HOPS`): the ingress before and
after its append; the router hearing the queued notice and calling the endpoint; the endpoint
called, its dispatch recorded, the prompt posted, ComfyUI's done frame, the output fetched and
stored, the end recorded; the webhook actor hearing the end, sending and answered.
`steps(lines)` turns the files' lines into each step's durations (pure).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TextIO

ENV = "COMFY_FLEET_HOP_TRACE"

#: (mark, what happened there), in path order.
HOPS: list[tuple[str, str]] = [
    ("ingress.append", "the ingress appends task.submitted"),
    ("ingress.appended", "its commit returned"),
    ("router.heard", "the router heard the queued notice"),
    ("router.call", "the router hands it to the endpoint (its stream, or a Ray call)"),
    ("endpoint.called", "the endpoint's dispatch runs"),
    ("endpoint.dispatched", "task.dispatched committed"),
    ("endpoint.posted", "POST /prompt answered"),
    ("endpoint.done_frame", "ComfyUI's last frame of the prompt"),
    ("endpoint.fetched", "the output fetched (GET /view)"),
    ("endpoint.stored", "the output stored (S3 PUT)"),
    ("endpoint.ended", "the end committed"),
    ("webhook.heard", "the webhook actor heard the end"),
    ("webhook.send", "the webhook POST starts"),
    ("webhook.sent", "the receiver answered"),
]

_dir: str | None = os.environ.get(ENV) or None
_out: TextIO | None = None


def mark(hop: str, task_id: str) -> None:
    """Note that `task_id` passed `hop` now (nothing when tracing is off)."""
    global _out
    if _dir is None:
        return
    if _out is None:
        os.makedirs(_dir, exist_ok=True)
        _out = open(os.path.join(_dir, f"{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115
    _out.write(f"{time.time():.6f} {hop} {task_id}\n")


def read(directory: str) -> list[str]:
    """Every mark line the processes wrote under `directory`."""
    lines: list[str] = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            lines.extend(f)
    return lines


def passes(lines: Iterable[str]) -> dict[str, dict[str, float]]:
    """Each task's first time at each hop, from mark lines (others are skipped)."""
    out: dict[str, dict[str, float]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        at, hop, task_id = parts
        try:
            out.setdefault(task_id, {}).setdefault(hop, float(at))
        except ValueError:
            continue
    return out


def steps(
    lines: Iterable[str], task_ids: Iterable[str] | None = None
) -> list[tuple[str, str, list[float]]]:
    """`(from, to, milliseconds)` for each pair of consecutive hops in `HOPS`, over the tasks
    (`task_ids`, else all) that passed both. A negative step is real: a notice can reach its
    listener before the appender hears its own commit."""
    seen = passes(lines)
    if task_ids is None:
        chosen = list(seen.values())
    else:
        chosen = [seen[t] for t in task_ids if t in seen]
    names = [h for h, _ in HOPS]
    return [
        (a, b, [(p[b] - p[a]) * 1000 for p in chosen if a in p and b in p])
        for a, b in zip(names, names[1:])
    ]
