"""What the command prints: plain columns for people, JSON with `--json`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import BaseModel

from comfy_fleet_client import models


def to_json(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return json.dumps(value, indent=2, ensure_ascii=False)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else ""


def tasks(items: Sequence[models.Task], out: TextIO) -> None:
    table(
        [(t.task_id, t.status, t.workflow, t.endpoint or "", _when(t.created_at)) for t in items],
        ["TASK", "STATUS", "WORKFLOW", "ENDPOINT", "CREATED"],
        out,
    )


def task(t: models.Task, out: TextIO) -> None:
    lines = [
        ("task", t.task_id),
        ("status", t.status),
        ("workflow", t.workflow + (f" ({t.workflow_version})" if t.workflow_version else "")),
        ("client_task_id", t.client_task_id),
        ("tenant", t.tenant),
        ("batch", t.batch_id),
        ("rerun of", t.rerun_of),
        ("endpoint", t.endpoint),
        ("attempt", t.attempt or None),
        ("queue", f"position {t.queue.position}, eta {t.queue.eta_s:.0f}s"
         if t.queue and t.queue.position is not None and t.queue.eta_s is not None else None),
        ("progress", f"{t.progress.value}/{t.progress.max}" if t.progress and t.progress.max else None),
        ("webhook", t.webhook),
        ("created", _when(t.created_at)),
        ("finished", _when(t.finished_at) or None),
    ]
    for label, value in lines:
        if value not in (None, ""):
            print(f"{label + ':':<16}{value}", file=out)
    if t.error is not None:
        print(f"{'error:':<16}{error_text(t)}", file=out)
    for o in t.outputs:
        print(f"{'output:':<16}{o.filename}  {o.content_type or ''}  {o.size or '?'} bytes", file=out)


def error_text(t: models.Task) -> str:
    if t.error is None:
        return t.status
    where = ""
    if t.error.node_id or t.error.node_type:
        where = f" (node {t.error.node_id or '?'}{' ' + t.error.node_type if t.error.node_type else ''})"
    return f"{t.error.code}: {t.error.message}{where}"


def workflows(items: Sequence[models.Workflow], out: TextIO) -> None:
    rows = []
    for w in items:
        props = list((w.params.get("properties") or {}).keys())
        req = set(w.required)
        names = ", ".join(p + ("*" if p in req else "") for p in props)
        rows.append((w.name, names, (w.description or "").splitlines()[0] if w.description else ""))
    table(rows, ["WORKFLOW", "PARAMS (* required)", "DESCRIPTION"], out)


def endpoints(items: Sequence[models.Endpoint], out: TextIO) -> None:
    table(
        [(e.endpoint, e.state, e.queue_remaining, e.inflight, ",".join(e.labels)) for e in items],
        ["ENDPOINT", "STATE", "QUEUE", "INFLIGHT", "LABELS"],
        out,
    )


def batch(b: models.Batch, out: TextIO) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in b.counts.items())
    print(f"batch {b.batch_id}: {b.status} ({len(b.task_ids)} tasks{'; ' + counts if counts else ''})", file=out)
    for tid in b.task_ids:
        print(tid, file=out)
