"""The ingress's view of workflow versions: which version a request runs, storing a version when
a task first uses it, and listing the versions held (docs/api.md §7.3).

A version is held when it is the current files' (the registry) or stored in the log's
`workflow_versions`. One `VersionBook` per ingress replica (`book(services)`); it remembers which
versions it has stored, so a version costs one insert per replica, not one per task.
"""

from __future__ import annotations

from typing import Any

from comfy_fleet import errors
from comfy_fleet.prompts import render
from comfy_fleet.workflows import registry as registry_module
from comfy_fleet.workflows.registry import Workflow
from serve_app.services import Services


class VersionBook:
    def __init__(self, services: Services) -> None:
        self.services = services
        #: parses stored versions, cached by (name, version), as the endpoints do
        self.stored = render.PromptRenderer(services.log)
        self._remembered: set[tuple[str, str]] = set()

    def current(self, name: str) -> Workflow | None:
        registry = self.services.registry
        return registry.get(name) if name in registry else None

    async def resolve(self, name: str, version: str | None) -> Workflow:
        """The workflow a request runs: the current files' when no version is pinned, else the
        pinned version. Raises UnknownWorkflow for a name not served now (pinned or not: the
        endpoints run, and the router routes, only the workflows served) and
        WorkflowVersionUnknown for a pinned version the service does not hold."""
        current = self.current(name)
        if current is None:
            raise errors.UnknownWorkflow(
                f"workflow {name!r} is not served; GET /workflows lists them",
                {"workflow": name, "known": self.services.registry.names()},
            )
        if version is None or current.version == version:
            return current
        try:
            return await self.stored.workflow(name, version)
        except errors.WorkflowVersionUnknown:
            raise errors.WorkflowVersionUnknown(
                f"workflow {name!r} has no version {version[:64]!r} here; "
                f"GET /workflows/{name}/versions lists the versions held",
                {"workflow": name, "workflow_version": version[:64]},
            ) from None

    async def remember(self, workflow: Workflow) -> None:
        """Store the version (once per replica) before a task that uses it is recorded."""
        key = (workflow.name, workflow.version)
        if key in self._remembered or not workflow.graph_json:
            return
        await self.services.log.remember_version(registry_module.stored_of(workflow))
        self._remembered.add(key)

    async def listed(self, name: str) -> list[dict[str, Any]]:
        """GET /workflows/{name}/versions: every version held, oldest first; the current
        files' version is last when no task has used it yet (`created_at` null). Raises
        WorkflowNotFound when the service holds no version of `name`."""
        current = self.current(name)
        stored = await self.services.log.list_versions(name)
        listed = [_entry(v.version, v.created_at, current) for v in stored]
        if current is not None and all(v.version != current.version for v in stored):
            listed.append(_entry(current.version, None, current))
        if not listed:
            self.services.registry.get(name)  # raises WorkflowNotFound, naming those served
        return listed

    async def one(self, name: str, version: str) -> dict[str, Any]:
        """GET /workflows/{name}/versions/{version}: the version with its two files' text."""
        current = self.current(name)
        if current is not None and current.version == version:
            workflow = current
        else:
            try:
                workflow = await self.stored.workflow(name, version)
            except errors.WorkflowVersionUnknown:
                raise errors.WorkflowNotFound(
                    f"workflow {name!r} has no version {version[:64]!r} here",
                    {"workflow": name, "workflow_version": version[:64]},
                ) from None
        held = await self.services.log.get_version(name, version)
        entry = _entry(version, held.created_at if held else None, self.current(name))
        return {
            **entry,
            "description": workflow.manifest.description,
            "graph": workflow.graph,
            "manifest": workflow.manifest_toml.decode("utf-8"),
        }


def _entry(version: str, created_at: Any, current: Workflow | None) -> dict[str, Any]:
    return {
        "version": version,
        "created_at": created_at.isoformat().replace("+00:00", "Z") if created_at else None,
        "current": current is not None and current.version == version,
    }


def book(services: Services) -> VersionBook:
    """The replica's VersionBook (made on first use)."""
    found = services.extra.get("versions")
    if not isinstance(found, VersionBook):
        found = services.extra["versions"] = VersionBook(services)
    return found
