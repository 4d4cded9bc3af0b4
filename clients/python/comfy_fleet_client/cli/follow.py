"""Following a task with a progress bar (rich) while its stream runs."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from comfy_fleet_client import models
from comfy_fleet_client.client import Client


def describe(event: models.StreamEvent, state: dict[str, object]) -> str | None:
    """The bar's text after `event`, or None to keep it."""
    if isinstance(event, models.QueueUpdate):
        if event.position and event.position > 0:
            eta = f", about {event.eta_s:.0f}s" if event.eta_s is not None else ""
            return f"queued: position {event.position}{eta}"
        return None
    if not isinstance(event, models.Event):
        return None
    data = event.data
    if event.type == "task.submitted":
        return "queued"
    if event.type == "task.dispatched":
        state["endpoint"] = data.get("endpoint")
        return f"sent to {data.get('endpoint')}"
    if event.type == "task.started":
        return f"running on {state.get('endpoint') or 'an endpoint'}"
    if event.type == "task.progressed":
        node = data.get("node")
        return f"running{' node ' + str(node) if node else ''}"
    if event.type == "task.requeued":
        return f"requeued ({data.get('reason')})"
    if event.type == "task.output_stored":
        return f"stored {data.get('filename')}"
    if event.type in models.FINAL_EVENT_TYPES:
        return event.type.removeprefix("task.")
    return None


def follow(
    client: Client, task_id: str, console: Console | None, label: str, timeout: float | None = None
) -> models.Task:
    """Follow `task_id` until it ends and return it; draws a bar on `console` (None: silent).
    Raises `WaitTimeout` after `timeout` seconds."""
    if console is None:
        return client.wait(task_id, timeout)
    columns = (
        SpinnerColumn(), TextColumn("[bold]{task.fields[label]}"), TextColumn("{task.description}"),
        BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
    )
    state: dict[str, object] = {}
    with Progress(*columns, console=console, transient=False) as bar:
        row = bar.add_task("waiting", total=None, label=label)
        for event in client.stream(task_id, timeout=timeout):
            text = describe(event, state)
            if text is not None:
                bar.update(row, description=text)
            if isinstance(event, models.Event) and event.type == "task.progressed":
                bar.update(row, completed=event.data.get("value", 0), total=event.data.get("max") or None)
            if isinstance(event, models.Event) and event.type == "task.succeeded":
                total = bar.tasks[0].total
                bar.update(row, completed=total or 1, total=total or 1)
    return client.get(task_id)
