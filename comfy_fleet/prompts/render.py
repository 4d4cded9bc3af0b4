"""PromptRenderer: the prompt a task sends to ComfyUI, rendered at dispatch.

A task records its workflow version and resolved params, not the graph: the prompt is built
from the version stored in `workflow_versions` (never from the files on disk, which may have
changed since the task was accepted) with `comfy_fleet.workflows.params.build_prompt`, the same
function the ingress used to check it. The build is deterministic, so every dispatch of a task
(a requeue, a restarted actor) sends the same prompt; only the task id enters it, as the
per-task `filename_prefix` of its save nodes. A task recorded with its graph (before versions
were stored) sends that graph as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from comfy_fleet import errors
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.workflows import registry, versions

#: Parsed versions kept per renderer (a version is parsed once, then built per task).
CACHE_SIZE = 64


class VersionSource(Protocol):
    """What the renderer reads: the log's `WorkflowVersions.get_version`."""

    async def get_version(self, name: str, version: str) -> versions.StoredVersion | None: ...


def image_names(inputs: list[dict[str, Any]]) -> dict[str, str]:
    """Each image parameter's file name on the ComfyUI host, from the task's `inputs`."""
    return {str(spec["param"]): str(spec["filename"]) for spec in inputs}


def upload_key(spec: dict[str, Any]) -> str:
    """Where the file dispatch uploads for one input is in S3: the PNG made of the bytes
    received ("upload_key"); a task recorded before inputs were kept has only "s3_key"."""
    return str(spec.get("upload_key") or spec["s3_key"])


class PromptRenderer:
    def __init__(self, source: VersionSource, *, cache_size: int = CACHE_SIZE) -> None:
        self.source = source
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], registry.Workflow] = OrderedDict()

    async def workflow(self, name: str, version: str) -> registry.Workflow:
        """The workflow as it was at `version`. Raises WorkflowVersionUnknown when the log does
        not hold it (or holds bytes that are not it)."""
        key = (name, version)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        stored = await self.source.get_version(name, version)
        if stored is None:
            raise errors.WorkflowVersionUnknown(
                f"workflow {name!r} version {version} is not stored", {"workflow": name,
                                                                        "version": version}
            )
        try:
            found = registry.workflow_from_stored(stored)
        except errors.ManifestInvalid as exc:
            raise errors.WorkflowVersionUnknown(exc.message, {"workflow": name,
                                                              "version": version}) from None
        self._cache[key] = found
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    async def prompt_of(self, state: TaskState) -> dict[str, Any]:
        """The prompt to POST for this task (the same on every dispatch)."""
        if state.prompt:
            return state.prompt
        workflow = await self.workflow(state.workflow, state.workflow_version)
        return workflow.build_prompt(
            state.params, task_id=state.task_id, image_names=image_names(state.inputs),
            # models by URL: the name each is pulled under (docs/api.md §7.5)
            model_names={str(m["param"]): str(m["filename"]) for m in state.models},
        )
