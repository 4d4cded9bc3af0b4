"""Read-only helpers on ComfyUI API-format graphs and on an endpoint's ``/object_info``.

An API-format graph is ``{node_id: {"class_type": str, "inputs": {name: value}}}``, where a value
is either a literal (a widget value) or a link ``[source_node_id, output_index]``. ``object_info``
is what ``GET /object_info`` answers: ``{class_type: {"input": {"required": {...}, "optional":
{...}}, "output_node": bool, ...}}``; a combo input is ``[[choice, ...], {...}]`` (or, in newer
ComfyUI, ``["COMBO", {"options": [choice, ...]}]``).

Nothing here does I/O or mutates its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

Graph = dict[str, dict[str, Any]]

#: File endings of model weights; a string input ending in one of them names a model file.
MODEL_EXTENSIONS: tuple[str, ...] = (
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".gguf",
    ".onnx",
    ".sft",
)

#: Input names of the built-in loader nodes; their values are model files even without an ending.
MODEL_INPUT_NAMES: frozenset[str] = frozenset(
    {
        "ckpt_name",
        "unet_name",
        "vae_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "clip_name3",
        "clip_name4",
        "lora_name",
        "control_net_name",
        "style_model_name",
        "gligen_name",
        "upscale_model_name",
        "model_name",
        "hypernetwork_name",
        "audio_encoder_name",
    }
)

#: Output classes recognised when no object_info is at hand.
KNOWN_OUTPUT_CLASSES: frozenset[str] = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveImageWebsocket",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveWEBM",
        "SaveAudio",
        "SaveAudioMP3",
        "SaveAudioOpus",
        "SaveLatent",
        "SaveGLB",
    }
)

_FILE_ENDING = re.compile(r"\.[A-Za-z0-9]{1,12}$")

#: Values that look like model names but are built-in options, not files.
_NOT_FILES: frozenset[str] = frozenset({"pixel_space", "None", "none", ""})


def is_link(value: Any) -> bool:
    """True when an input value is a connection ``[node_id, output_index]``, not a literal."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def node_id_order(node_id: str) -> tuple[int, int | str]:
    """Sort key: numeric ids in numeric order, then the others by name."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def node_classes(graph: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The set of node classes the graph uses."""
    return {str(node["class_type"]) for node in graph.values()}


def required_models(
    graph: Mapping[str, Mapping[str, Any]], object_info: Mapping[str, Any] | None = None
) -> set[str]:
    """The model file names the graph's nodes ask for.

    A literal string input counts when its name is a known loader input (``ckpt_name``,
    ``unet_name``, …) or its value ends in a model file ending (``.safetensors``, ``.gguf``, …).
    With ``object_info``, a combo input of a node in a ``loaders`` category whose value has a file
    ending counts too, which covers custom loaders with unusual input names (while options such
    as DualCLIPLoader's ``type = "flux"`` do not).
    """
    models: set[str] = set()
    for node in graph.values():
        cls = node.get("class_type")
        category = ""
        if object_info is not None and isinstance(object_info.get(cls), Mapping):
            category = str(object_info[cls].get("category", ""))
        for name, value in node.get("inputs", {}).items():
            if not isinstance(value, str) or value in _NOT_FILES:
                continue
            if (
                name in MODEL_INPUT_NAMES
                or value.lower().endswith(MODEL_EXTENSIONS)
                or (
                    "loaders" in category
                    and object_info is not None
                    and _FILE_ENDING.search(value) is not None
                    and combo_choices(input_spec(object_info, cls, name)) is not None
                )
            ):
                models.add(value)
    return models


def output_nodes(
    graph: Mapping[str, Mapping[str, Any]], object_info: Mapping[str, Any] | None = None
) -> list[str]:
    """Ids of the graph's output nodes, in node-id order.

    With ``object_info`` the endpoint's own ``output_node`` flag decides; without it, a node is an
    output when its class is a known save/preview class or it has a literal ``filename_prefix``.
    """
    found = []
    for node_id, node in graph.items():
        cls = node.get("class_type")
        if object_info is not None and isinstance(object_info.get(cls), Mapping):
            is_output = bool(object_info[cls].get("output_node"))
        else:
            is_output = cls in KNOWN_OUTPUT_CLASSES or isinstance(
                node.get("inputs", {}).get("filename_prefix"), str
            )
        if is_output:
            found.append(node_id)
    return sorted(found, key=node_id_order)


def prefix_nodes(graph: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Ids of the nodes with a literal ``filename_prefix`` input (the nodes that write files)."""
    return sorted(
        (
            node_id
            for node_id, node in graph.items()
            if isinstance(node.get("inputs", {}).get("filename_prefix"), str)
        ),
        key=node_id_order,
    )


def input_spec(object_info: Mapping[str, Any], class_type: Any, name: str) -> Any:
    """The ``object_info`` spec of one input of a class (required, optional or hidden), or None."""
    info = object_info.get(class_type)
    if not isinstance(info, Mapping):
        return None
    inputs = info.get("input", {})
    if not isinstance(inputs, Mapping):
        return None
    for section in ("required", "optional", "hidden"):
        group = inputs.get(section)
        if isinstance(group, Mapping) and name in group:
            return group[name]
    return None


def combo_choices(spec: Any) -> list[Any] | None:
    """The choices of a combo input spec, or None when the spec is not a combo."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list | tuple):
        return list(head)
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        if isinstance(options, list | tuple):
            return list(options)
    return None


def can_run(
    graph: Mapping[str, Mapping[str, Any]],
    object_info: Mapping[str, Any],
    *,
    ignore: Iterable[tuple[str, str]] = (),
) -> tuple[bool, str | None]:
    """Whether an endpoint with this ``object_info`` can run the graph, and if not, why.

    It can when every node class exists there and every literal value of a combo input is among
    the endpoint's choices for it (so a missing model file is caught before routing). ``ignore``
    lists ``(node_id, input)`` pairs not to check: image inputs whose file is uploaded at dispatch,
    so it cannot be among the choices yet. Inputs the endpoint does not declare are left alone, as
    ComfyUI itself ignores them (e.g. the UI's ``"upload": "image"`` on LoadImage).
    """
    skip = set(ignore)
    problems: list[str] = []
    missing = sorted(node_classes(graph) - set(object_info))
    if missing:
        problems.append("missing node class " + ", ".join(repr(c) for c in missing))
    for node_id in sorted(graph, key=node_id_order):
        node = graph[node_id]
        cls = node.get("class_type")
        if cls not in object_info:
            continue
        for name, value in node.get("inputs", {}).items():
            if (node_id, name) in skip or is_link(value):
                continue
            choices = combo_choices(input_spec(object_info, cls, name))
            if choices is not None and value not in choices:
                what = "model" if _looks_like_model(name, value) else "value"
                problems.append(
                    f"missing {what} {value!r} for node {node_id!r} ({cls}) input {name!r}"
                )
    if problems:
        return False, "; ".join(problems)
    return True, None


def _looks_like_model(name: str, value: Any) -> bool:
    return name in MODEL_INPUT_NAMES or (
        isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)
    )
