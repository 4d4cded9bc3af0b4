"""Model files given by name (docs/api.md §7.5), pure: which files an endpoint holds in each
model folder, which a task needs, and whether an endpoint holds them all. No I/O.

An endpoint's ``/object_info`` lists, as each loader input's choices, the files of the model
folder that loader reads (ComfyUI's ``folder_paths.get_filename_list(<folder>)``, re-read when
the folder changed). ComfyUI does not say which folder an input lists, so the folder is known only
for the core loaders in ``LOADER_INPUTS``, read off ComfyUI 0.3.64's ``nodes.py`` and
``comfy_extras``. A custom loader's input is in no folder here: its files are not reported, and a
model parameter that writes into it records no need (its name is sent as it is, and ComfyUI
refuses the prompt where the file is missing).

A task needs ``(folder, filename)`` for each parameter that names a file (a model given by name,
or left at the graph's own name; a choice among checkpoints) and writes into a known loader input;
it carries each as the routing label ``file:<folder>/<filename>``, and routing gives it only to an
endpoint whose folder lists it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfy_fleet import errors
from comfy_fleet.workflows import graph as graph_module
from comfy_fleet.workflows.param_spec import ParamSpec

#: (class_type, input) of ComfyUI's core loaders → the model folder whose files its choices list.
LOADER_INPUTS: Mapping[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
    ("DiffusersLoader", "model_path"): "diffusers",
}
#: The folders some loader above lists.
KNOWN_FOLDERS: frozenset[str] = frozenset(LOADER_INPUTS.values())
#: ComfyUI's legacy folder names (``folder_paths.map_legacy``).
FOLDER_ALIASES: Mapping[str, str] = {
    "clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet",
}
#: A task's routing label requiring a model file: ``file:<folder>/<filename>``.
LABEL_PREFIX = "file:"
#: The most characters a task's ``file:`` labels may take together: they travel in the log's
#: queued notice (PostgreSQL caps a notice at 8000 bytes; a raw graph's ``node:`` labels take up
#: to 4000 of them).
MAX_LABEL_CHARS = 2000

#: folder → the file names an endpoint's loaders list there
Held = Mapping[str, frozenset[str]]


def canonical(folder: str) -> str:
    """The folder name ComfyUI uses for ``folder`` (``clip`` → ``text_encoders``)."""
    return FOLDER_ALIASES.get(folder, folder)


def folder_of(class_type: Any, input_name: str) -> str | None:
    """The model folder a loader input lists, or None when it is not a known core loader's."""
    if not isinstance(class_type, str):
        return None
    return LOADER_INPUTS.get((class_type, input_name))


def held(object_info: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """The files each known folder holds, by the choices of the loaders of ``object_info``
    (the union over a folder's loaders; a folder none of whose loaders the endpoint has is
    absent). Non-string choices are left out."""
    found: dict[str, set[str]] = {}
    for (class_type, name), folder in LOADER_INPUTS.items():
        choices = graph_module.combo_choices(graph_module.input_spec(object_info, class_type, name))
        if choices is None:
            continue
        found.setdefault(folder, set()).update(c for c in choices if isinstance(c, str))
    return {folder: frozenset(names) for folder, names in found.items()}


def counts(files: Held) -> dict[str, int]:
    """How many files each folder lists (what GET /endpoints shows), folders sorted."""
    return {folder: len(files[folder]) for folder in sorted(files)}


def label(folder: str, filename: str) -> str:
    return f"{LABEL_PREFIX}{canonical(folder)}/{filename}"


def labels(needs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The routing labels of a task's ``model_files`` (each once, in order)."""
    return list(dict.fromkeys(label(n["folder"], n["filename"]) for n in needs))


def needs_of_labels(task_labels: Iterable[str]) -> set[tuple[str, str]]:
    """The ``(folder, filename)`` a task's routing labels require."""
    out: set[tuple[str, str]] = set()
    for item in task_labels:
        if item.startswith(LABEL_PREFIX):
            folder, _, filename = item[len(LABEL_PREFIX):].partition("/")
            out.add((folder, filename))
    return out


def holds(needs: Iterable[tuple[str, str]], files: Held) -> bool:
    """Whether an endpoint holding ``files`` lists every ``(folder, filename)`` of ``needs``."""
    return all(name in files.get(folder, ()) for folder, name in needs)


def of_params(
    graph: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, ParamSpec],
    resolved: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """What a workflow task needs of its parameters that name model files (``params``: the
    manifest's): ``[{"param", "folder", "filename"}]`` for each parameter written into a known
    loader input (a ``model`` parameter, or a ``choice`` of checkpoints) whose value is a file
    name: given, its default, or, left out, the graph's own. A model by URL needs no file (it is
    pulled), nor a ``bypass`` parameter left out (its node is not sent). Raises
    ``errors.WorkflowParamsInvalid`` when the names are too long to route together
    (MAX_LABEL_CHARS)."""
    out: list[dict[str, Any]] = []
    for name, spec in params.items():
        if spec.type == "image" or spec.node not in graph:
            continue
        folder = folder_of(graph[spec.node].get("class_type"), spec.field)
        if folder is None:
            continue
        if name in resolved:
            value = resolved[name]
        elif spec.bypass:
            continue
        else:
            value = graph[spec.node].get("inputs", {}).get(spec.field)
        if isinstance(value, str):
            out.append({"param": name, "folder": folder, "filename": value})
    if too_long(out):
        names = [n["param"] for n in out]
        problem = f"model file names longer than {MAX_LABEL_CHARS} characters together"
        raise errors.WorkflowParamsInvalid(
            f"{', '.join(names)}: {problem}", [{"param": n, "problem": problem} for n in names]
        )
    return out


def of_graph(graph: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a raw graph needs: ``[{"node_id", "folder", "filename"}]`` for each literal file
    name of a known loader input, in node-id order."""
    out: list[dict[str, Any]] = []
    for node_id in sorted(graph, key=graph_module.node_id_order):
        node = graph[node_id]
        for name, value in (node.get("inputs") or {}).items():
            folder = folder_of(node.get("class_type"), name)
            if folder is not None and isinstance(value, str):
                out.append({"node_id": node_id, "folder": folder, "filename": value})
    return out


def too_long(needs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether these needs' labels exceed MAX_LABEL_CHARS together."""
    return sum(len(x) for x in labels(needs)) > MAX_LABEL_CHARS
