"""Raw graphs (docs/api.md §7.4): an API-format graph sent with a task instead of a workflow name.

Pure: checks a graph against the node classes and input types the fleet's endpoints report
(their ``/object_info``, as ``comfy_fleet.workflows.graph`` reads it) and an allow-list, and
turns an accepted graph into the prompt a task records. No I/O; nothing mutates its arguments.

What ``check`` refuses, each as ``errors.GraphInvalid`` (422) whose ``details`` name the node
(``node_id``, ``class_type``) and, where one is at fault, the ``input``:
- a graph that is not API format, larger than ``max_nodes``, or whose distinct classes would not
  fit a task's routing labels (MAX_CLASS_LABEL_CHARS);
- a class outside the allow-list (``problem = "class_refused"``) or that no endpoint reports
  (``"class_unknown"``), or a graph no single endpoint has every class of (``"class_unknown"``,
  naming the first node the best-covering endpoint lacks);
- a broken link: to a node not in the graph, or to an output index its class does not have
  (``"broken_link"``); a link whose output type cannot feed the input (``"type_mismatch"``);
- a missing required input, a literal of the wrong type, out of the declared min/max, not among a
  combo's choices, or a string longer than ``max_string_length`` (``"invalid_value"``);
- an image input (a combo with ``image_upload``) naming a file neither in ``files`` nor among the
  endpoint's choices, or a file in ``files`` that no image input names (``"file_unknown"``,
  ``"file_unused"``).

The object_info a check uses is ``normalised``: combos listing an endpoint's input folder (the
``*_upload`` ones) are emptied, so every endpoint with the same nodes and models gives the same
``digest`` and the ingress keeps one copy per digest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from comfy_fleet import errors
from comfy_fleet.workflows import graph as graph_module

#: A raw-graph task's ``workflow``.
WORKFLOW = "graph"
#: A task's routing label requiring a node class: ``node:<class_type>`` (``policies.routing``).
NODE_LABEL_PREFIX = "node:"
#: The most characters the ``node:<class>`` labels of one graph may take together: they travel in
#: the log's queued notice (PostgreSQL caps a notice at 8000 bytes).
MAX_CLASS_LABEL_CHARS = 4000
#: The most files a raw graph may bring.
MAX_FILES = 32
#: A file name in ``files``: a key only (the uploaded name is the service's own).
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Upload flags of a combo whose choices are the files of an endpoint's input folder.
_UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload")
#: Literal types ComfyUI converts before its min/max check (and what a JSON value may be).
_NUMBER_TYPES = ("INT", "FLOAT")


@dataclass(frozen=True)
class Limits:
    """The bounds a raw graph is held to (from the settings)."""

    max_nodes: int = 500
    max_string_length: int = 10_000


def refuse(node_id: str | None, class_type: Any, problem: str, message: str,
           input_name: str | None = None) -> errors.GraphInvalid:
    """The 422 naming the node (and input) at fault."""
    details: dict[str, Any] = {"node_id": node_id, "problem": problem}
    if class_type is not None:
        details["class_type"] = class_type
    if input_name is not None:
        details["input"] = input_name
    where = f"node {node_id!r}" + (f" ({class_type})" if class_type else "") if node_id else "graph"
    return errors.GraphInvalid(f"graph: {where}: {message}", details)


# --- object_info as the fleet reports it ------------------------------------------------------


def is_upload_spec(spec: Any) -> bool:
    """True for a combo whose choices are an endpoint's input files (LoadImage's ``image``)."""
    if not isinstance(spec, list | tuple) or len(spec) < 2 or not isinstance(spec[1], Mapping):
        return False
    return any(spec[1].get(flag) for flag in _UPLOAD_FLAGS)


def takes_image_file(spec: Any) -> bool:
    """True for an input that names an uploaded image (LoadImage's ``image``): a file from
    ``files`` may go there."""
    return is_upload_spec(spec) and bool(spec[1].get("image_upload"))


def normalised(object_info: Mapping[str, Any]) -> dict[str, Any]:
    """``object_info`` with every upload combo's choices emptied (a shallow rewrite: the
    classes that have none are shared with the argument, which stays as it was)."""
    out: dict[str, Any] = {}
    for cls, info in object_info.items():
        out[cls] = info
        inputs = info.get("input") if isinstance(info, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        changed: dict[str, Any] = {}
        for section, group in inputs.items():
            if not isinstance(group, Mapping):
                continue
            if any(is_upload_spec(s) for s in group.values()):
                changed[section] = {
                    name: (_emptied(spec) if is_upload_spec(spec) else spec)
                    for name, spec in group.items()
                }
        if changed:
            out[cls] = {**info, "input": {**inputs, **changed}}
    return out


def _emptied(spec: Sequence[Any]) -> list[Any]:
    if spec[0] == "COMBO":
        return ["COMBO", {**spec[1], "options": []}, *spec[2:]]
    return [[], *spec[1:]]


def digest(object_info: Mapping[str, Any]) -> str:
    """sha256 (hex) of an object_info's canonical JSON: equal for equal node sets and types."""
    return hashlib.sha256(orjson.dumps(object_info, option=orjson.OPT_SORT_KEYS)).hexdigest()


def class_labels(graph: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The routing labels of a graph: ``node:<class>`` for each distinct class, sorted."""
    return [NODE_LABEL_PREFIX + c for c in sorted(graph_module.node_classes(graph))]


def classes_of_labels(labels: Iterable[str]) -> set[str]:
    """The node classes a task's routing labels require."""
    n = len(NODE_LABEL_PREFIX)
    return {label[n:] for label in labels if label.startswith(NODE_LABEL_PREFIX)}


# --- the check --------------------------------------------------------------------------------


def check(
    graph: Any,
    fleet: Sequence[Mapping[str, Any]],
    *,
    files: Collection[str] = (),
    allow: Collection[str] | None = None,
    limits: Limits = Limits(),
) -> dict[tuple[str, str], str]:
    """Check a raw graph against the fleet (one normalised object_info per kind of endpoint);
    return ``{(node_id, input): file name}`` of the image inputs that name a file in ``files``
    (what ``prompt`` rewrites). Raises ``errors.GraphInvalid`` (module doc)."""
    nodes = _shape(graph, limits)
    _check_files(files)
    order = sorted(nodes, key=graph_module.node_id_order)
    if allow is not None:
        allowed = set(allow)
        for node_id in order:
            cls = nodes[node_id]["class_type"]
            if cls not in allowed:
                raise refuse(node_id, cls, "class_refused",
                             f"class {cls!r} is not allowed here (RAW_GRAPH_ALLOW_NODES)")
    known: set[str] = set().union(*(set(info) for info in fleet)) if fleet else set()
    for node_id in order:
        cls = nodes[node_id]["class_type"]
        if cls not in known:
            raise refuse(node_id, cls, "class_unknown",
                         f"no endpoint of the fleet has node class {cls!r}")
    classes = graph_module.node_classes(nodes)
    able = [info for info in fleet if classes <= set(info)]
    if not able:
        best = max(fleet, key=lambda info: len(classes & set(info)))
        node_id = next(n for n in order if nodes[n]["class_type"] not in best)
        cls = nodes[node_id]["class_type"]
        raise refuse(node_id, cls, "class_unknown",
                     f"no endpoint has every class of this graph (the closest lacks {cls!r})")
    first: errors.GraphInvalid | None = None
    for info in able:  # the first kind of endpoint the graph passes on decides
        try:
            return _check_on(nodes, order, info, files, limits)
        except errors.GraphInvalid as exc:
            first = first or exc
    assert first is not None
    raise first


def _shape(graph: Any, limits: Limits) -> dict[str, dict[str, Any]]:
    if isinstance(graph, dict) and ("nodes" in graph or "links" in graph):
        raise refuse(None, None, "not_api_format",
                     "this is ComfyUI's editor format ('nodes'/'links'); send the API format "
                     "(ComfyUI: Export (API))")
    if not isinstance(graph, dict) or not graph:
        raise refuse(None, None, "not_api_format",
                     "expected a non-empty object of node id -> {class_type, inputs}")
    if len(graph) > limits.max_nodes:
        raise refuse(None, None, "too_large",
                     f"{len(graph)} nodes; the limit is {limits.max_nodes} (RAW_GRAPH_MAX_NODES)")
    for node_id, node in graph.items():
        if len(node_id) > 64 or not node_id.strip():
            raise refuse(node_id[:64], None, "not_api_format", "a node id is 1 to 64 characters")
        if not isinstance(node, dict):
            raise refuse(node_id, None, "not_api_format", "a node must be an object")
        cls = node.get("class_type")
        if not isinstance(cls, str) or not cls or len(cls) > 200:
            raise refuse(node_id, None, "not_api_format",
                         "class_type is missing or not a string of at most 200 characters")
        if not isinstance(node.get("inputs"), dict):
            raise refuse(node_id, cls, "not_api_format", "inputs is missing or not an object")
    if sum(len(label) for label in class_labels(graph)) > MAX_CLASS_LABEL_CHARS:
        raise refuse(None, None, "too_large",
                     f"its distinct node class names exceed {MAX_CLASS_LABEL_CHARS} characters")
    return graph


def _check_files(files: Collection[str]) -> None:
    if len(files) > MAX_FILES:
        raise errors.GraphInvalid(f"files: {len(files)} files; the limit is {MAX_FILES}",
                                  {"problem": "too_many_files", "limit": MAX_FILES})
    for name in files:
        if not _FILE_NAME.match(name):
            raise errors.GraphInvalid(
                f"files: {name[:80]!r} is not a file name (a letter or digit, then letters, "
                "digits, '.', '_' or '-'; at most 128 characters)",
                {"file": name[:128], "problem": "bad_file_name"})


def _check_on(nodes: Mapping[str, Mapping[str, Any]], order: list[str],
              info: Mapping[str, Any], files: Collection[str], limits: Limits
              ) -> dict[tuple[str, str], str]:
    uploads: dict[tuple[str, str], str] = {}
    for node_id in order:
        node = nodes[node_id]
        cls = node["class_type"]
        declared = info[cls].get("input", {}) if isinstance(info[cls], Mapping) else {}
        required = declared.get("required", {}) if isinstance(declared, Mapping) else {}
        for name in required if isinstance(required, Mapping) else ():
            if name not in node["inputs"]:
                raise refuse(node_id, cls, "invalid_value", f"required input {name!r} is missing",
                             name)
        for name, value in node["inputs"].items():
            spec = graph_module.input_spec(info, cls, name)
            if isinstance(value, list):
                _check_link(nodes, node_id, cls, name, value, spec, info)
                continue
            _check_strings(node_id, cls, name, value, limits.max_string_length)
            if takes_image_file(spec) and isinstance(value, str) and value in files:
                uploads[(node_id, name)] = value
                continue
            _check_literal(node_id, cls, name, value, spec, files)
    unused = sorted(set(files) - set(uploads.values()))
    if unused:
        raise errors.GraphInvalid(
            f"files: {unused[0]!r} is named by no image input of the graph",
            {"file": unused[0], "problem": "file_unused"})
    return uploads


def _check_link(nodes: Mapping[str, Mapping[str, Any]], node_id: str, cls: str, name: str,
                value: list[Any], spec: Any, info: Mapping[str, Any]) -> None:
    """ComfyUI reads every list input as a link ``[source_node_id, output_index]``."""
    if not graph_module.is_link(value):
        raise refuse(node_id, cls, "broken_link",
                     f"input {name!r}: {str(value)[:80]} is not a link [node_id, output_index] "
                     "(a literal list is written {\"__value__\": [...]})", name)
    source, index = value
    if source not in nodes:
        raise refuse(node_id, cls, "broken_link",
                     f"input {name!r} links to node {source!r}, which is not in the graph", name)
    source_cls = nodes[source]["class_type"]
    outputs = info[source_cls].get("output", []) if isinstance(info[source_cls], Mapping) else []
    if not 0 <= index < len(outputs):
        raise refuse(node_id, cls, "broken_link",
                     f"input {name!r} links to output {index} of node {source!r} ({source_cls}), "
                     f"which has {len(outputs)} output(s)", name)
    wanted = spec[0] if isinstance(spec, list | tuple) and spec else None
    given = outputs[index]
    if isinstance(wanted, str) and isinstance(given, str) and not _types_meet(given, wanted):
        raise refuse(node_id, cls, "type_mismatch",
                     f"input {name!r} wants {wanted}, but node {source!r} output {index} gives "
                     f"{given}", name)


def _types_meet(given: str, wanted: str) -> bool:
    """ComfyUI's own rule: equal, either is ``*``, or the comma-separated unions share a type."""
    if given == wanted or "*" in (given, wanted) or wanted == "COMBO":
        return True
    return bool(set(given.split(",")) & set(wanted.split(",")))


def _check_strings(node_id: str, cls: str, name: str, value: Any, limit: int) -> None:
    """Every string a literal holds (nested ones too) is at most ``limit`` characters."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and len(item) > limit:
            raise refuse(node_id, cls, "invalid_value",
                         f"input {name!r}: a string of {len(item)} characters; the limit is "
                         f"{limit} (MAX_STRING_LENGTH)", name)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_literal(node_id: str, cls: str, name: str, value: Any, spec: Any,
                   files: Collection[str]) -> None:
    if not isinstance(spec, list | tuple) or not spec:
        return  # undeclared: ComfyUI ignores it
    choices = graph_module.combo_choices(spec)
    if choices is not None:
        if is_upload_spec(spec):
            if value not in choices:
                what = "is not in files" if takes_image_file(spec) else (
                    "names a file of an endpoint's own folder, which a raw graph cannot use")
                raise refuse(node_id, cls, "file_unknown",
                             f"input {name!r}: {str(value)[:80]!r} {what}", name)
        elif value not in choices:
            shown = ", ".join(repr(c) for c in choices[:10]) + (" …" if len(choices) > 10 else "")
            raise refuse(node_id, cls, "invalid_value",
                         f"input {name!r}: {str(value)[:80]!r} is not one of {shown}", name)
        return
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if kind in _NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise refuse(node_id, cls, "invalid_value", f"input {name!r}: expected {kind}", name)
        if kind == "INT" and isinstance(value, float) and not value.is_integer():
            raise refuse(node_id, cls, "invalid_value", f"input {name!r}: expected INT", name)
        low, high = options.get("min"), options.get("max")
        if isinstance(low, int | float) and value < low:
            raise refuse(node_id, cls, "invalid_value",
                         f"input {name!r}: {value} is smaller than its min {low}", name)
        if isinstance(high, int | float) and value > high:
            raise refuse(node_id, cls, "invalid_value",
                         f"input {name!r}: {value} is bigger than its max {high}", name)
    elif kind == "STRING" and not isinstance(value, str):
        raise refuse(node_id, cls, "invalid_value", f"input {name!r}: expected STRING", name)
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise refuse(node_id, cls, "invalid_value", f"input {name!r}: expected BOOLEAN", name)


# --- the prompt a task records ----------------------------------------------------------------


def prompt(graph: Mapping[str, Mapping[str, Any]], *, task_id: str,
           uploads: Mapping[tuple[str, str], str], file_names: Mapping[str, str],
           output_prefix: str = "fleet") -> dict[str, dict[str, Any]]:
    """The prompt to send for a checked graph (``graph`` is left untouched): each image input in
    ``uploads`` ((node_id, input) → file) names that file's uploaded name (``file_names``), and
    every literal ``filename_prefix`` points into ``<output_prefix>/<task_id>/`` as a manifest
    workflow's does, so outputs never collide and the host's files are cleaned."""
    out = orjson.loads(orjson.dumps(graph))
    for (node_id, name), file in uploads.items():
        out[node_id]["inputs"][name] = file_names[file]
    for node_id in graph_module.prefix_nodes(out):
        inputs = out[node_id]["inputs"]
        base = re.split(r"[\\/]", inputs["filename_prefix"])[-1].strip()
        if base in ("", ".", ".."):
            base = "output"
        inputs["filename_prefix"] = f"{output_prefix}/{task_id}/{base}"
    return dict(out)
