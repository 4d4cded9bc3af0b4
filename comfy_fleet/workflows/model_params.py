"""Model parameters (docs/api.md §7.5) and bypassed nodes, pure: no I/O.

A ``model`` parameter takes the file name of a model the fleet's endpoints hold, or
``{"url", "sha256"}``: a model the service fetches once into its bucket (``models/<sha256>``) and
the endpoint that runs the task pulls into the parameter's folder under ``filename_for`` before it
sends the prompt. A parameter with ``bypass = true`` that the request leaves out takes its node
out of the prompt (``bypass``), so an optional LoRA costs nothing when none is given.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from comfy_fleet.workflows import graph as graph_module
from comfy_fleet.workflows.param_spec import SHA256_HEX, ParamSpec

#: Where the service keeps a model in its bucket.
KEY_PREFIX = "models/"
#: Routing label of a task that needs the model with this sha256 pulled onto its endpoint.
LABEL_PREFIX = "model:"
#: File endings a pulled model may get (from its URL); anything else gets DEFAULT_EXTENSION.
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
DEFAULT_EXTENSION = ".safetensors"


def model_key(sha256: str) -> str:
    """``models/<sha256>``: the bucket's key of a model."""
    if not SHA256_HEX.match(sha256):
        raise ValueError(f"{sha256!r} is not a lower-case hex sha256")
    return KEY_PREFIX + sha256


def filename_for(sha256: str, url: str) -> str:
    """The name a pulled model gets in its folder: ``fleet/<sha256><ending of the URL's path>``."""
    path = urllib.parse.urlsplit(url).path
    ending = posixpath.splitext(path)[1].lower()
    return f"fleet/{sha256}{ending if ending in EXTENSIONS else DEFAULT_EXTENSION}"


def label(sha256: str) -> str:
    return LABEL_PREFIX + sha256


def shas_of_labels(labels: Iterable[str]) -> set[str]:
    """The sha256s of the models a task's labels say it needs pulled."""
    return {x[len(LABEL_PREFIX):] for x in labels if x.startswith(LABEL_PREFIX)}


def by_url(manifest_params: Mapping[str, ParamSpec], resolved: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The resolved model parameters given by URL: ``{param: {"url", "sha256"}}``."""
    return {
        name: dict(value)
        for name, value in resolved.items()
        if name in manifest_params
        and manifest_params[name].type == "model"
        and isinstance(value, Mapping)
    }


def json_schema(spec: ParamSpec) -> dict[str, Any]:
    """The JSON Schema of a model parameter's value."""
    return {
        "oneOf": [
            {"type": "string", "minLength": 1, "description": "a model file the endpoints hold"},
            {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
                    "sha256": {"type": "string", "pattern": SHA256_HEX.pattern},
                },
                "required": ["url", "sha256"],
                "additionalProperties": False,
            },
        ],
        "x-model-folder": spec.folder,
    }


def bypassed_nodes(params: Mapping[str, ParamSpec], resolved: Mapping[str, Any]) -> set[str]:
    """Nodes of the ``bypass`` parameters the request left out."""
    return {spec.node for name, spec in params.items() if spec.bypass and name not in resolved}


def bypass(prompt: dict[str, dict[str, Any]], nodes: set[str]) -> dict[str, dict[str, Any]]:
    """Take ``nodes`` out of ``prompt`` (in place; returned): a link to output ``i`` of one of
    them goes to that node's ``i``-th linked input instead (through chains of bypassed nodes).
    The manifest checked that every such ``i`` exists."""
    passes = {
        node: [v for v in prompt[node]["inputs"].values() if graph_module.is_link(v)]
        for node in nodes
        if node in prompt
    }

    def source(link: list[Any]) -> list[Any]:
        seen = 0
        while link[0] in passes and seen <= len(passes):
            link, seen = passes[link[0]][link[1]], seen + 1
        return list(link)

    for node in passes:
        del prompt[node]
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in inputs.items():
            if graph_module.is_link(value) and value[0] in passes:
                inputs[name] = source(value)
    return prompt
