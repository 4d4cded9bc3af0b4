"""The workflows the service can run: every ``<name>.json`` + ``<name>.toml`` pair in a folder.

A broken pair is reported and skipped; the others load. ``reload()`` re-reads the folder and
tells what was added, changed and removed; a workflow whose files became broken keeps serving its
last good version (the error is reported), so a bad edit never takes a working workflow down.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_fleet import errors

from comfy_fleet.workflows import graph as graph_module, manifest as manifest_module, params as params_module, raw_graph
from comfy_fleet.workflows import versions
from comfy_fleet.workflows.manifest import Manifest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Workflow:
    """One servable workflow: its manifest, its parsed API graph and a content version."""

    name: str
    manifest: Manifest
    #: The parsed API-format graph; never mutated (``build_prompt`` works on a copy).
    graph: dict[str, dict[str, Any]]
    #: `versions.digest` of the two files' bytes; changes whenever either file changes.
    version: str
    #: The two files' bytes as read: what `workflow_versions` keeps of this version.
    graph_json: bytes = field(default=b"", repr=False, compare=False)
    manifest_toml: bytes = field(default=b"", repr=False, compare=False)

    @property
    def required_labels(self) -> tuple[str, ...]:
        return self.manifest.required_labels

    def required_models(self, object_info: Mapping[str, Any] | None = None) -> set[str]:
        """The model files the graph names, without the nodes bypassed when their optional
        parameter is left out, nor the inputs of model parameters."""
        graph = params_module.apply_params(self.graph, self.manifest, {})
        for node, name in self.manifest.model_fields():
            if node in graph:
                graph[node]["inputs"].pop(name, None)
        return graph_module.required_models(graph, object_info)

    def can_run(
        self, object_info: Mapping[str, Any], resolved: Mapping[str, Any] | None = None
    ) -> tuple[bool, str | None]:
        """Whether an endpoint with this ``object_info`` can run the workflow (and why not).

        With ``resolved`` params, the check is on the graph as the task would send it (e.g. a
        choice parameter that picks a model); image inputs and models given by URL are never
        checked, since their file is uploaded or pulled at dispatch; the nodes of ``bypass``
        parameters left out are not checked, as they are not sent.
        """
        graph = params_module.apply_params(self.graph, self.manifest, resolved or {})
        ignore = self.manifest.image_fields()
        if not resolved:
            ignore |= self.manifest.model_fields()
        else:
            ignore |= {
                (spec.node, spec.field) for name, spec in self.manifest.params.items()
                if spec.type == "model" and isinstance(resolved.get(name), Mapping)
            }
        return graph_module.can_run(graph, object_info, ignore=ignore)

    def validate(self, params: Any, **kwargs: Any) -> dict[str, Any]:
        """``comfy_fleet.workflows.params.validate_params`` for this workflow."""
        return params_module.validate_params(self.manifest, params, **kwargs)

    def build_prompt(
        self,
        resolved: Mapping[str, Any],
        *,
        task_id: str,
        image_names: Mapping[str, str] | None = None,
        model_names: Mapping[str, str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``comfy_fleet.workflows.params.build_prompt`` for this workflow."""
        return params_module.build_prompt(
            self.graph, self.manifest, resolved, task_id=task_id, image_names=image_names,
            model_names=model_names,
        )

    def describe(self, *, max_string_length: int | None = None) -> dict[str, Any]:
        """The ``GET /workflows`` entry: name, description, params (JSON Schema), and extras."""
        return {
            "name": self.name,
            "description": self.manifest.description,
            "params": params_module.params_json_schema(
                self.manifest, max_string_length=max_string_length
            ),
            "labels": list(self.manifest.required_labels),
            "version": self.version,
        }


@dataclass(frozen=True)
class ReloadResult:
    """What a ``reload()`` changed, and the pairs it could not load."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    errors: tuple[errors.ManifestInvalid, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
            "errors": [e.message for e in self.errors],
        }


def load_workflow(directory: Path, name: str) -> Workflow:
    """Load ``<directory>/<name>.json`` + ``<name>.toml``; raises ``errors.ManifestInvalid``."""
    json_path, toml_path = directory / f"{name}.json", directory / f"{name}.toml"
    if not _NAME.match(name):
        raise errors.ManifestInvalid(
            f"{toml_path}: a workflow name is a letter or digit, then letters, digits, _ or - "
            "(≤ 64 characters)"
        )
    if name == raw_graph.WORKFLOW:
        raise errors.ManifestInvalid(
            f"{toml_path}: {name!r} is the workflow name of raw graphs; name the files otherwise"
        )
    return parse_files(
        name, _read(json_path), _read(toml_path), json_source=str(json_path),
        toml_source=str(toml_path),
    )


def parse_files(
    name: str, json_bytes: bytes, toml_bytes: bytes, *, json_source: str, toml_source: str
) -> Workflow:
    """The workflow these two files' bytes make; raises ``errors.ManifestInvalid`` naming the
    source (a path, or a stored version) of the file at fault."""
    try:
        data = json.loads(json_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.ManifestInvalid(f"{json_source}: not valid JSON: {exc}") from exc
    graph = manifest_module.parse_graph(data, source=json_source)
    try:
        raw = tomllib.loads(toml_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise errors.ManifestInvalid(f"{toml_source}: not valid TOML: {exc}") from exc
    manifest = manifest_module.parse_manifest(raw, graph, name=name, source=toml_source)
    return Workflow(
        name=name, manifest=manifest, graph=graph,
        version=versions.digest(json_bytes, toml_bytes),
        graph_json=json_bytes, manifest_toml=toml_bytes,
    )


def workflow_from_stored(stored: versions.StoredVersion) -> Workflow:
    """The workflow a stored version holds, parsed as it was when first used. Raises
    ``errors.ManifestInvalid`` when the stored bytes are not that version's (edited behind
    our back) or no longer parse."""
    source = f"workflow {stored.name!r} version {stored.version}"
    if not stored.intact():
        raise errors.ManifestInvalid(f"{source}: the stored files do not match the version")
    return parse_files(
        stored.name, stored.graph_json, stored.manifest_toml,
        json_source=f"{source} (JSON)", toml_source=f"{source} (TOML)",
    )


def stored_of(workflow: Workflow) -> versions.StoredVersion:
    """What `workflow_versions` keeps of a loaded workflow's version."""
    return versions.StoredVersion(
        workflow.name, workflow.version, workflow.graph_json, workflow.manifest_toml
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.ManifestInvalid(f"{path}: cannot read: {exc.strerror or exc}") from exc


def scan(directory: Path) -> tuple[dict[str, Workflow], list[errors.ManifestInvalid]]:
    """Load every pair in ``directory``; return the good ones and one error per bad one."""
    if not directory.is_dir():
        return {}, [errors.ManifestInvalid(f"{directory}: not a folder")]
    stems: dict[str, set[str]] = {}
    for path in directory.iterdir():
        if path.name.startswith(".") or path.suffix not in (".json", ".toml") or not path.is_file():
            continue
        stems.setdefault(path.stem, set()).add(path.suffix)
    found: dict[str, Workflow] = {}
    problems: list[errors.ManifestInvalid] = []
    for stem in sorted(stems):
        suffixes = stems[stem]
        if suffixes != {".json", ".toml"}:
            have = next(iter(suffixes))
            lack = ".toml" if have == ".json" else ".json"
            problems.append(
                errors.ManifestInvalid(
                    f"{directory / (stem + have)}: no {stem}{lack} beside it "
                    "(a workflow is <name>.json, the API export, plus <name>.toml, its manifest)"
                )
            )
            continue
        try:
            found[stem] = load_workflow(directory, stem)
        except errors.ManifestInvalid as exc:
            problems.append(exc)
    return found, problems


class WorkflowRegistry:
    """The loaded workflows by name. Lookups are plain dict reads; ``reload`` swaps the dict."""

    def __init__(self, workflows: Iterable[Workflow] = (), directory: Path | None = None) -> None:
        self._workflows: dict[str, Workflow] = {w.name: w for w in workflows}
        self.directory = directory

    @classmethod
    def load(cls, directory: Path | str) -> tuple[WorkflowRegistry, list[errors.ManifestInvalid]]:
        """Load a folder; broken pairs are returned as errors and left out."""
        directory = Path(directory)
        found, problems = scan(directory)
        return cls(found.values(), directory), problems

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise errors.WorkflowNotFound(
                f"no workflow named {name!r} (available: {', '.join(self.names()) or 'none'})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def workflows(self) -> list[Workflow]:
        return [self._workflows[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._workflows

    def __len__(self) -> int:
        return len(self._workflows)

    def reload(self) -> ReloadResult:
        """Re-read the folder and swap in what it holds.

        A pair whose two files are present but fail to load keeps its last good version, if it
        had one; a workflow with either file gone is removed.
        """
        if self.directory is None:
            raise ValueError("this registry was not loaded from a folder")
        found, problems = scan(self.directory)
        old = self._workflows
        broken = {n for n in old if n not in found and _pair_exists(self.directory, n)}
        # An unchanged workflow keeps its object, so holders of it see no difference.
        new = {
            n: old[n] if n in old and old[n].version == w.version else w for n, w in found.items()
        }
        for name in broken:
            new[name] = old[name]  # a bad edit must not take a serving workflow down
        added = tuple(sorted(set(new) - set(old)))
        removed = tuple(sorted(set(old) - set(new)))
        changed = tuple(sorted(n for n in set(new) & set(old) if new[n].version != old[n].version))
        self._workflows = new
        return ReloadResult(added, changed, removed, tuple(problems))


def _pair_exists(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").exists() and (directory / f"{name}.toml").exists()
