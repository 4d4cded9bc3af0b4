"""Workflow manifests: ``<name>.toml`` beside ``<name>.json`` (docs/api.md section 4).

The JSON file is a ComfyUI API-format graph; the TOML file says which request parameter is
written into which node input, with what type and limits. Parsing checks the manifest against the
graph, so a manifest that loads can always be applied. Every problem raises
``errors.ManifestInvalid`` with a message that starts ``<file>: <key>: ``.

Manifest keys (all optional except ``params.<name>.node/field/type``)::

    description = "…"            # shown by GET /workflows
    labels = ["gpu"]             # the endpoint must carry all of these labels
    output_prefix = "fleet"      # output files go to <output_prefix>/<task_id>/<original prefix>
    [params.<name>]
    node, field, type, required, default, min, max, max_length, choices, description,
    folder (type "model": the ComfyUI model folder, e.g. "loras"),
    bypass (true: left out, the parameter's node is taken out of the prompt, its users linked
            to its own linked inputs in order; e.g. an optional LoraLoader)
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_fleet import errors

from comfy_fleet.workflows import graph as graph_module, param_spec

# One parameter's spec and the check of a value against it live in ``param_spec``; these names
# stay here for the manifest's readers.
PARAM_TYPES = param_spec.PARAM_TYPES
SEED_MAX = param_spec.SEED_MAX
ParamSpec = param_spec.ParamSpec
check_value = param_spec.check_value

#: Top-level manifest keys.
MANIFEST_KEYS: tuple[str, ...] = ("description", "labels", "output_prefix", "params")

#: Keys of one ``[params.<name>]`` table.
PARAM_KEYS: tuple[str, ...] = (
    "node",
    "field",
    "type",
    "required",
    "default",
    "min",
    "max",
    "max_length",
    "choices",
    "description",
    "folder",
    "bypass",
)

#: Which types each optional key makes sense for.
_KEY_TYPES: dict[str, tuple[str, ...]] = {
    "min": ("int", "float", "seed"),
    "max": ("int", "float", "seed"),
    "max_length": ("string",),
    "choices": ("choice",),
    "default": ("string", "int", "float", "bool", "seed", "choice"),
    "folder": ("model",),
}

#: A ComfyUI model folder name (``checkpoints``, ``loras``, ``upscale_models``, …).
_FOLDER = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
#: Folders that hold no models.
_NOT_MODEL_FOLDERS = frozenset({"custom_nodes", "configs"})

#: Default root folder (under ComfyUI's output dir) of every task's output files.
DEFAULT_OUTPUT_PREFIX: str = "fleet"

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked manifest. Picklable (plain dicts and tuples)."""

    name: str
    description: str = ""
    params: dict[str, ParamSpec] = field(default_factory=dict)
    #: Labels an endpoint must all carry to run this workflow.
    required_labels: tuple[str, ...] = ()
    #: Root of the per-task output folder, see ``comfy_fleet.workflows.params.task_filename_prefix``.
    output_prefix: str = DEFAULT_OUTPUT_PREFIX

    def image_fields(self) -> set[tuple[str, str]]:
        """``(node, field)`` of every image parameter: inputs filled by an upload at dispatch."""
        return {(p.node, p.field) for p in self.params.values() if p.type == "image"}

    def model_fields(self) -> set[tuple[str, str]]:
        """``(node, field)`` of every model parameter: a model by URL is pulled at dispatch."""
        return {(p.node, p.field) for p in self.params.values() if p.type == "model"}


def parse_graph(data: Any, *, source: str) -> dict[str, dict[str, Any]]:
    """Check that ``data`` is an API-format graph and return it (unchanged).

    Refuses the UI format (``nodes``/``links``), which ComfyUI cannot run as a prompt.
    """
    if isinstance(data, dict) and ("nodes" in data or "links" in data):
        raise errors.ManifestInvalid(
            f"{source}: this is ComfyUI's UI (editor) format (it has 'nodes'/'links'), not the API "
            "format; in ComfyUI use 'Export (API)' (older versions: enable the dev mode options, "
            "then 'Save (API Format)') and save that file instead"
        )
    if not isinstance(data, dict) or not data:
        raise errors.ManifestInvalid(
            f"{source}: expected a JSON object of node id -> {{class_type, inputs}} (API format)"
        )
    for node_id, node in data.items():
        if not isinstance(node, dict):
            raise errors.ManifestInvalid(f"{source}: {node_id}: a node must be a JSON object")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise errors.ManifestInvalid(f"{source}: {node_id}.class_type: missing or not a string")
        if not isinstance(node.get("inputs"), dict):
            raise errors.ManifestInvalid(f"{source}: {node_id}.inputs: missing or not an object")
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value and isinstance(value[0], str):
                if not graph_module.is_link(value):
                    raise errors.ManifestInvalid(
                        f"{source}: {node_id}.inputs.{name}: malformed link {value!r}"
                    )
                if value[0] not in data:
                    raise errors.ManifestInvalid(
                        f"{source}: {node_id}.inputs.{name}: links to node {value[0]!r}, "
                        "which is not in the graph"
                    )
    return data


def load_graph(path: Path) -> dict[str, dict[str, Any]]:
    """Read and check an API-format graph file."""
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise errors.ManifestInvalid(f"{path}: not valid JSON: {exc}") from exc
    except OSError as exc:
        raise errors.ManifestInvalid(f"{path}: cannot read: {exc}") from exc
    return parse_graph(data, source=str(path))


def load_manifest(path: Path, graph: dict[str, dict[str, Any]], *, name: str) -> Manifest:
    """Read ``path`` (TOML) and check it against ``graph``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise errors.ManifestInvalid(f"{path}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ManifestInvalid(f"{path}: cannot read: {exc}") from exc
    return parse_manifest(data, graph, name=name, source=str(path))


def parse_manifest(
    data: dict[str, Any], graph: dict[str, dict[str, Any]], *, name: str, source: str
) -> Manifest:
    """Check a decoded manifest against its graph; ``source`` names the file in messages."""

    def fail(key: str, problem: str) -> errors.ManifestInvalid:
        return errors.ManifestInvalid(f"{source}: {key}: {problem}")

    unknown = sorted(set(data) - set(MANIFEST_KEYS))
    if unknown:
        raise fail(
            ", ".join(unknown),
            f"unknown key{'s' if len(unknown) > 1 else ''} (allowed: {', '.join(MANIFEST_KEYS)})",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    labels = data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise fail("labels", "must be a list of non-empty strings")
    output_prefix = data.get("output_prefix", DEFAULT_OUTPUT_PREFIX)
    if not isinstance(output_prefix, str) or not _PREFIX.match(output_prefix):
        raise fail(
            "output_prefix",
            "must be a relative folder name such as 'fleet' (letters, digits, _ . -, and /)",
        )
    raw_params = data.get("params", {})
    if not isinstance(raw_params, dict):
        raise fail("params", "must be a table of [params.<name>] tables")

    params: dict[str, ParamSpec] = {}
    targets: dict[tuple[str, str], str] = {}
    for pname, raw in raw_params.items():
        spec = _parse_param(pname, raw, graph, fail)
        other = targets.get((spec.node, spec.field))
        if other is not None:
            raise fail(
                f"params.{pname}",
                f"writes node {spec.node!r} input {spec.field!r}, as params.{other} already does",
            )
        targets[(spec.node, spec.field)] = pname
        params[pname] = spec
    return Manifest(
        name=name,
        description=description,
        params=params,
        required_labels=tuple(dict.fromkeys(labels)),
        output_prefix=output_prefix.strip("/"),
    )


def _parse_param(pname: str, raw: Any, graph: dict[str, dict[str, Any]], fail: Any) -> ParamSpec:
    """One ``[params.<name>]`` table as a spec, checked in the order its keys are explained."""
    key = f"params.{pname}"
    ptype = _param_type(pname, raw, fail)
    node, pfield = _param_target(key, raw, graph, fail)
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise fail(f"{key}.required", "must be true or false")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail(f"{key}.description", "must be a string")
    pmin, pmax, max_length = _param_bounds(key, raw, ptype, fail)
    choices = _param_choices(key, raw, fail) if ptype == "choice" else None
    folder = _param_folder(key, raw, fail) if ptype == "model" else None
    bypass = raw.get("bypass", False)
    if not isinstance(bypass, bool):
        raise fail(f"{key}.bypass", "must be true or false")
    if bypass:
        _check_bypass(key, raw, node, graph, fail)

    default = raw.get("default")
    if default is not None:
        if required:
            raise fail(f"{key}.default", "a required parameter has no default; drop one of them")
        problem = check_value(
            ParamSpec(pname, node, pfield, ptype, False, None, pmin, pmax, max_length, choices),
            default,
        )
        if problem is not None:
            raise fail(f"{key}.default", problem)

    return ParamSpec(
        name=pname,
        node=node,
        field=pfield,
        type=ptype,
        required=required,
        default=default,
        min=pmin,
        max=pmax,
        max_length=max_length,
        choices=choices,
        description=description,
        folder=folder,
        bypass=bypass,
    )


def _param_folder(key: str, raw: dict[str, Any], fail: Any) -> str:
    folder = raw.get("folder")
    if folder is None:
        raise fail(f"{key}.folder", "a model parameter names its ComfyUI model folder, e.g. \"loras\"")
    if not isinstance(folder, str) or not _FOLDER.match(folder) or folder in _NOT_MODEL_FOLDERS:
        raise fail(f"{key}.folder", f"{folder!r} is not a ComfyUI model folder name")
    return folder


def _check_bypass(
    key: str, raw: dict[str, Any], node: str, graph: dict[str, dict[str, Any]], fail: Any
) -> None:
    """A bypassed node passes its ``i``-th linked input to users of its output ``i``."""
    if raw.get("required") or raw.get("default") is not None:
        raise fail(f"{key}.bypass", "only an optional parameter without a default can bypass")
    linked = [v for v in graph[node]["inputs"].values() if graph_module.is_link(v)]
    for other_id, other in graph.items():
        for name, value in other["inputs"].items():
            if graph_module.is_link(value) and value[0] == node and value[1] >= len(linked):
                raise fail(
                    f"{key}.bypass",
                    f"node {other_id!r} input {name!r} uses output {value[1]} of node {node!r}, "
                    f"which has only {len(linked)} linked input(s) to pass on when bypassed",
                )


def _param_type(pname: str, raw: Any, fail: Any) -> str:
    """The table's shape (a name, known keys, node/field/type present) and its type."""
    key = f"params.{pname}"
    if not _PARAM_NAME.match(pname):
        raise fail(key, "a parameter name is a letter or _ then letters, digits or _ (≤ 64)")
    if not isinstance(raw, dict):
        raise fail(key, "must be a table with node, field and type")
    unknown = sorted(set(raw) - set(PARAM_KEYS))
    if unknown:
        raise fail(
            ", ".join(f"{key}.{k}" for k in unknown),
            f"unknown key{'s' if len(unknown) > 1 else ''} (allowed: {', '.join(PARAM_KEYS)})",
        )
    for required_key in ("node", "field", "type"):
        if required_key not in raw:
            raise fail(f"{key}.{required_key}", "missing")

    ptype = raw["type"]
    if ptype not in PARAM_TYPES:
        raise fail(
            f"{key}.type", f"unknown type {ptype!r} (expected one of {', '.join(PARAM_TYPES)})"
        )
    for opt, types in _KEY_TYPES.items():
        if opt in raw and ptype not in types:
            raise fail(f"{key}.{opt}", f"not allowed for type {ptype!r} (only {', '.join(types)})")
    return ptype


def _param_target(
    key: str, raw: dict[str, Any], graph: dict[str, dict[str, Any]], fail: Any
) -> tuple[str, str]:
    """``(node, field)``: a literal input of a node in the graph."""
    node = raw["node"]
    if isinstance(node, int) and not isinstance(node, bool):
        node = str(node)  # `node = 6` is an easy slip; ids are strings in the graph
    if not isinstance(node, str):
        raise fail(f"{key}.node", "must be a node id string, e.g. \"6\"")
    if node not in graph:
        raise fail(f"{key}.node", f"node {node!r} is not in the graph")
    pfield = raw["field"]
    if not isinstance(pfield, str):
        raise fail(f"{key}.field", "must be a string")
    inputs = graph[node]["inputs"]
    cls = graph[node]["class_type"]
    if pfield not in inputs:
        raise fail(
            f"{key}.field",
            f"node {node!r} ({cls}) has no input {pfield!r} "
            f"(it has: {', '.join(inputs) or 'none'})",
        )
    if graph_module.is_link(inputs[pfield]):
        raise fail(
            f"{key}.field",
            f"input {pfield!r} of node {node!r} ({cls}) is a link from node "
            f"{inputs[pfield][0]!r}; a parameter can only replace a widget value, not a connection",
        )
    return node, pfield


def _param_bounds(
    key: str, raw: dict[str, Any], ptype: str, fail: Any
) -> tuple[int | float | None, int | float | None, int | None]:
    """``(min, max, max_length)``, each None when the table leaves it out."""
    pmin, pmax = raw.get("min"), raw.get("max")
    for bound_key, bound in (("min", pmin), ("max", pmax)):
        if bound is None:
            continue
        if ptype in ("int", "seed"):
            if not param_spec.is_int(bound):
                raise fail(f"{key}.{bound_key}", f"must be an integer, got {bound!r}")
            if ptype == "seed" and not 0 <= bound <= SEED_MAX:
                raise fail(f"{key}.{bound_key}", f"a seed bound must be within 0..{SEED_MAX}")
        elif not param_spec.is_number(bound):
            raise fail(f"{key}.{bound_key}", f"must be a number, got {bound!r}")
    if pmin is not None and pmax is not None and pmin > pmax:
        raise fail(f"{key}.min", f"min {pmin!r} is greater than max {pmax!r}")

    max_length = raw.get("max_length")
    if max_length is not None and (not param_spec.is_int(max_length) or max_length < 1):
        raise fail(f"{key}.max_length", "must be a positive integer")
    return pmin, pmax, max_length


def _param_choices(key: str, raw: dict[str, Any], fail: Any) -> tuple[Any, ...]:
    """A choice parameter's choices: a non-empty list of distinct strings, numbers or booleans."""
    raw_choices = raw.get("choices")
    if raw_choices is None:
        raise fail(f"{key}.choices", "a choice parameter needs a list of choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise fail(f"{key}.choices", "must be a non-empty list")
    for c in raw_choices:
        finite = not isinstance(c, float) or math.isfinite(c)
        if not isinstance(c, str | int | float) or not finite:
            raise fail(f"{key}.choices", f"{c!r} is not a string, number or boolean")
    if len({(type(c), c) for c in raw_choices}) != len(raw_choices):
        raise fail(f"{key}.choices", "has duplicates")
    return tuple(raw_choices)
