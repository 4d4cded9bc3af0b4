"""Raw graphs at the ingress (docs/api.md §7.4): who may send one, the check against the fleet's
node info, and the staging of its image files. `serve_app/submission.py` calls these before it
records anything; each refusal raises before the one append.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_fleet import errors
from comfy_fleet.workflows import model_files, raw_graph
from serve_app.services import Services


@dataclass(frozen=True)
class Checked:
    """A graph that passed: the image inputs its `files` go to, its routing labels, and the
    model files it names (the task's `model_files`)."""

    uploads: dict[tuple[str, str], str]
    labels: list[str]
    files: list[dict[str, Any]] = field(default_factory=list)


def permit(settings: Any, principal: Any) -> None:
    """Raise RawGraphsDisabled (403) naming the setting when this key may not send a graph:
    raw graphs are off, or the key is a tenant's and `RAW_GRAPHS_TENANTS` is not set."""
    if not settings.raw_graphs:
        raise errors.RawGraphsDisabled(
            "raw graphs are off on this service (RAW_GRAPHS=true turns them on); "
            "send a workflow name (GET /workflows lists them)",
            {"setting": "RAW_GRAPHS"},
        )
    if not getattr(principal, "is_admin", True) and not settings.raw_graphs_tenants:
        raise errors.RawGraphsDisabled(
            "raw graphs are for admin keys on this service (RAW_GRAPHS_TENANTS=true lets "
            "tenant keys send them too)",
            {"setting": "RAW_GRAPHS_TENANTS"},
        )


async def check(services: Services, graph: Any, files: dict[str, Any]) -> Checked:
    """Check the graph against the node info the endpoints report (no call to the router once
    a digest is known). Raises GraphInvalid (422) naming the node, or EndpointUnavailable (503)
    while no endpoint has reported its nodes yet."""
    fleet = await services.node_catalog.fleet(services.router.node_catalog)
    if not fleet:
        raise errors.EndpointUnavailable(
            "no endpoint has reported its node classes yet; retry in a few seconds",
            {"retry_after_s": 2},
        )
    settings = services.settings
    uploads = raw_graph.check(
        graph, fleet, files=list(files),
        allow=settings.raw_graph_allow_nodes or None,
        limits=raw_graph.Limits(
            max_nodes=settings.raw_graph_max_nodes, max_string_length=settings.max_string_length
        ),
    )
    # It runs only where every model file its core loaders name is listed (as a workflow's).
    needs = model_files.of_graph(graph)
    if model_files.too_long(needs):
        raise errors.GraphInvalid(
            f"graph: the model file names of its loaders exceed {model_files.MAX_LABEL_CHARS} "
            "characters together", {"node_id": None, "problem": "too_large"})
    labels = raw_graph.class_labels(graph) + model_files.labels(needs)
    return Checked(uploads=uploads, labels=labels, files=needs)


def file_names(task_id: str, files: dict[str, Any]) -> dict[str, str]:
    """The name each file gets on the endpoint (in ComfyUI's input folder)."""
    return {name: f"fleet/{task_id}-{i}.png" for i, name in enumerate(sorted(files))}


async def stage(
    services: Services, task_id: str, graph: dict[str, Any], files: dict[str, Any],
    checked: Checked,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read, check and store the graph's image files as image parameters are (same limits,
    same URL policy); returns the prompt to record and the task's `inputs`."""
    from serve_app import inputs as inputs_module

    names = file_names(task_id, files)
    try:
        staged = await inputs_module.stage_images(services, task_id, None, files, names)
    except errors.InvalidRequest as exc:
        raise _as_file_error(exc) from None
    prompt = raw_graph.prompt(graph, task_id=task_id, uploads=checked.uploads, file_names=names)
    return prompt, staged


def _as_file_error(exc: errors.InvalidRequest) -> errors.InvalidRequest:
    """The image checks name a parameter; here it is a file of `files`."""
    details = exc.details if isinstance(exc.details, list) else []
    name = details[0].get("param") if details and isinstance(details[0], dict) else None
    if name is None:
        return exc
    message = exc.message.removeprefix(f"params.{name}: ").removeprefix(f"{name}: ")
    problem = details[0].get("problem", message)
    return type(exc)(f"files.{name}: {message}", [{"file": name, "problem": problem}])
