"""POST /prompt validation as ComfyUI 0.3.64 does it, plus the node catalogue it checks against.

A port of ``execution.validate_prompt`` / ``validate_inputs`` (commit a125cd84) that answers with
the same error objects, byte for byte, as recorded in trace d: ``required_input_missing``,
``bad_linked_input``, ``return_type_mismatch``, ``invalid_input_type``,
``value_smaller_than_min`` / ``value_bigger_than_max``, ``value_not_in_list``,
``custom_validation_failed`` (LoadImage & co. check the file exists), ``exception_during_validation``
and ``exception_during_inner_validation`` (a link to a missing node, a bad output index), and the
top-level ``no_prompt``, ``invalid_prompt``, ``prompt_no_outputs`` and
``prompt_outputs_failed_validation``. Quirks kept on purpose: numeric strings are coerced with
``int()``/``float()`` and written back into the prompt (history shows the coerced values); a node
that failed for one output also lists every later failing output in ``dependent_outputs``; where the
real server raises an unhandled exception (HTTP 500), ``validate_prompt`` raises ``PromptCrashed``.

Deliberate differences: inputs are checked in ``input_order`` (the real server walks a Python set,
so its order of several errors on one node varies between runs); tracebacks name the frames the real
one shows for the recorded cases and fewer frames for the rare others.

The catalogue is the recorded ``GET /object_info`` (``data/object_info_full.json``, 478 classes).
It was made without model files, so every loader's choice list is empty; ``Catalogue.load(models)``
fills the lists of the loader inputs that list a model folder's files, the way ComfyUI's
``folder_paths`` does (sorted names first, then fixed entries the recording has, e.g. VAELoader's
``pixel_space``). The parsed JSON is shared between catalogues; a loaded catalogue is read-only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).parent / "data" / "object_info_full.json"

# model folder -> (class_type, input name) whose choices list that folder's files.
# Read off ComfyUI 0.3.64's loaders (nodes.py, comfy_extras/*): each calls
# folder_paths.get_filename_list(<folder>) in INPUT_TYPES.
MODEL_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoints": (
        ("CheckpointLoaderSimple", "ckpt_name"),
        ("CheckpointLoader", "ckpt_name"),
        ("unCLIPCheckpointLoader", "ckpt_name"),
        ("ImageOnlyCheckpointLoader", "ckpt_name"),
        ("CreateHookModelAsLora", "ckpt_name"),
        ("CreateHookModelAsLoraModelOnly", "ckpt_name"),
    ),
    "loras": (
        ("LoraLoader", "lora_name"),
        ("LoraLoaderModelOnly", "lora_name"),
        ("CreateHookLora", "lora_name"),
        ("CreateHookLoraModelOnly", "lora_name"),
    ),
    "vae": (("VAELoader", "vae_name"),),
    "text_encoders": (
        ("CLIPLoader", "clip_name"),
        ("DualCLIPLoader", "clip_name1"),
        ("DualCLIPLoader", "clip_name2"),
        ("TripleCLIPLoader", "clip_name1"),
        ("TripleCLIPLoader", "clip_name2"),
        ("TripleCLIPLoader", "clip_name3"),
        ("QuadrupleCLIPLoader", "clip_name1"),
        ("QuadrupleCLIPLoader", "clip_name2"),
        ("QuadrupleCLIPLoader", "clip_name3"),
        ("QuadrupleCLIPLoader", "clip_name4"),
    ),
    "diffusion_models": (("UNETLoader", "unet_name"),),
    "controlnet": (("ControlNetLoader", "control_net_name"), ("DiffControlNetLoader", "control_net_name")),
    "style_models": (("StyleModelLoader", "style_model_name"),),
    "clip_vision": (("CLIPVisionLoader", "clip_name"),),
    "gligen": (("GLIGENLoader", "gligen_name"),),
    "hypernetworks": (("HypernetworkLoader", "hypernetwork_name"),),
    "upscale_models": (("UpscaleModelLoader", "model_name"),),
    "photomaker": (("PhotoMakerLoader", "photomaker_model_name"),),
    "model_patches": (("ModelPatchLoader", "name"),),
    "diffusers": (("DiffusersLoader", "model_path"),),
}

# ComfyUI's legacy folder names (folder_paths.map_legacy).
FOLDER_ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}

# Nodes whose combo lists the image files of the input folder (GET /object_info shows them).
INPUT_IMAGE_INPUTS = (("LoadImage", "image"), ("LoadImageMask", "image"))
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def canonical_folder(folder: str) -> str:
    """The folder name ComfyUI uses for ``folder`` (``clip`` -> ``text_encoders``)."""
    return FOLDER_ALIASES.get(folder, folder)


@functools.cache
def _recorded() -> dict[str, Any]:
    with DATA_FILE.open("rb") as f:
        return json.load(f)


def combo_options(spec: list[Any]) -> list[Any] | None:
    """The options of an input spec ``[type, extra]``, or None when it is not a combo.

    V1 combos carry the list as the type (``[[...], {...}]``), V3 ones as
    ``["COMBO", {"options": [...]}]``.
    """
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return extra.get("options", [])
    return None


class Catalogue:
    """The object_info of one stand-in. Build with ``Catalogue.load``; do not mutate."""

    def __init__(self, info: dict[str, Any], models: dict[str, list[str]]) -> None:
        self._info = info
        self._models = models
        self._outputs = frozenset(k for k, v in info.items() if v.get("output_node") is True)

    @classmethod
    def load(cls, models: Mapping[str, list[str]] | None = None) -> Catalogue:
        """The recorded catalogue with ``models`` (folder -> file names) in the loaders' lists."""
        key = tuple(sorted((canonical_folder(k), tuple(v)) for k, v in (models or {}).items()))
        return _load_cached(key)

    def object_info(self, input_dir: Path | None = None) -> dict[str, Any]:
        """The full ``GET /object_info`` body; with ``input_dir``, LoadImage lists its images."""
        if input_dir is None:
            return self._info
        images = list_input_images(input_dir)
        info = dict(self._info)
        for class_type, name in INPUT_IMAGE_INPUTS:
            node = copy.deepcopy(info[class_type])
            spec = node["input"]["required"][name]
            spec[0] = list(images)
            info[class_type] = node
        return info

    def node(self, class_type: str) -> dict[str, Any] | None:
        """One class's object_info entry, or None when the class is unknown."""
        try:
            return self._info.get(class_type)
        except TypeError:  # an unhashable class_type names no class
            return None

    def output_nodes(self) -> set[str]:
        """Names of the classes with ``output_node: true``."""
        return set(self._outputs)

    def model_files(self, folder: str) -> list[str] | None:
        """The configured files of a model folder (sorted), or None when none were configured."""
        files = self._models.get(canonical_folder(folder))
        return None if files is None else list(files)


@functools.lru_cache(maxsize=32)
def _load_cached(key: tuple[tuple[str, tuple[str, ...]], ...]) -> Catalogue:
    models: dict[str, list[str]] = {}
    for folder, files in key:
        models.setdefault(folder, [])
        models[folder] = sorted(set(models[folder]) | set(files))
    base = _recorded()
    info = dict(base)  # shallow: only the loaders we fill get their own copy
    for folder, files in models.items():
        for class_type, name in MODEL_INPUTS.get(folder, ()):
            if class_type not in info:
                continue
            if info[class_type] is base[class_type]:
                info[class_type] = copy.deepcopy(base[class_type])
            spec = info[class_type]["input"]["required"][name]
            options = combo_options(spec)
            assert options is not None, (class_type, name)
            filled = [*files, *(o for o in options if o not in files)]
            if isinstance(spec[0], list):
                spec[0] = filled
            else:
                spec[1]["options"] = filled
    return Catalogue(info, models)


def list_input_images(input_dir: Path) -> list[str]:
    """Image files directly in ``input_dir``, sorted, as LoadImage's choice list shows them."""
    try:
        names = os.listdir(input_dir)
    except OSError:
        return []
    return sorted(
        n for n in names
        if Path(n).suffix.lower() in _IMAGE_SUFFIXES and (Path(input_dir) / n).is_file()
    )


# --------------------------------------------------------------------------- validation


class PromptCrashed(Exception):
    """The real server raises an unhandled exception for this body (it answers HTTP 500).

    The stand-in's own error: it imports nothing of the project it stands in for."""


@dataclasses.dataclass
class ValidationResult:
    """What POST /prompt answers. ``ok`` False -> 400 with ``error_body``."""

    ok: bool
    error_body: dict[str, Any] | None
    outputs_to_execute: list[str]
    node_errors: dict[str, Any]


# ComfyUI's execution.py of 0.3.64, for the tracebacks it puts in exception errors.
_EXECUTION_PY = "<COMFYUI_ROOT>/execution.py"


def _frame(line: int, func: str, code: str, marks: str) -> str:
    return f'  File "{_EXECUTION_PY}", line {line}, in {func}\n    {code}\n    {marks}\n'


def _call_frame(line: int, func: str, target: str, call: str) -> str:
    code = f"{target} = {call}"
    return _frame(line, func, code, " " * (len(target) + 3) + "^" * len(call))


_FRAME_PROMPT_CALL = _call_frame(
    1010, "validate_prompt", "m", "await validate_inputs(prompt_id, prompt, o, validated)"
)
_FRAME_INNER_CALL = _call_frame(
    808, "validate_inputs", "r", "await validate_inputs(prompt_id, prompt, o_id, validated)"
)
_FRAME_INPUTS = _frame(
    730, "validate_inputs", "inputs = prompt[unique_id]['inputs']",
    " " * 9 + "~" * 17 + "^" * 10,
)
_FRAME_LINK_NODE = _frame(
    788, "validate_inputs", "o_class_type = prompt[o_id]['class_type']",
    " " * 15 + "~" * 6 + "^" * 6,
)
_FRAME_LINK_SLOT = _frame(
    790, "validate_inputs", "received_type = r[val[1]]", " " * 16 + "~" + "^" * 8,
)


class _Traced(Exception):
    """An exception raised inside validate_inputs, with the frames ComfyUI's traceback shows."""

    def __init__(self, exc: BaseException, frames: list[str]) -> None:
        super().__init__(exc, frames)

    @property
    def exc(self) -> BaseException:
        return self.args[0]

    @property
    def frames(self) -> list[str]:
        return self.args[1]


def _exception_parts(ex: BaseException) -> tuple[BaseException, list[str]]:
    if isinstance(ex, _Traced):
        return ex.exc, ex.frames
    return ex, []


def _full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


@dataclasses.dataclass(frozen=True)
class _FileCheck:
    """A node's VALIDATE_INPUTS that checks a file exists (folder_paths.exists_annotated_filepath)."""

    qualname: str  # of the validate function, for the TypeError when its input is not literal
    input_name: str
    message: str


# The nodes of 0.3.64 whose VALIDATE_INPUTS (validate_inputs in V3) is a file check; the
# validated input skips the min/max/combo checks, as the real server does.
_FILE_CHECKS: dict[str, _FileCheck] = {
    "LoadImage": _FileCheck("LoadImage.VALIDATE_INPUTS", "image", "Invalid image file: {}"),
    "LoadImageMask": _FileCheck("LoadImageMask.VALIDATE_INPUTS", "image", "Invalid image file: {}"),
    "LoadImageOutput": _FileCheck("LoadImage.VALIDATE_INPUTS", "image", "Invalid image file: {}"),
    "LoadLatent": _FileCheck("LoadLatent.VALIDATE_INPUTS", "latent", "Invalid latent file: {}"),
    "LoadVideo": _FileCheck("LoadVideo.validate_inputs", "file", "Invalid video file: {}"),
}


def _types_match(received_type: Any, input_type: Any) -> bool:
    """comfy_execution.graph_utils.validate_node_input (non-strict)."""
    if not received_type != input_type:
        return True
    if isinstance(received_type, list) and input_type == "COMBO":
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    accepted = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in accepted:
        return True
    return len(received & accepted) > 0


@dataclasses.dataclass
class _Context:
    prompt: dict[str, Any]
    catalogue: Catalogue
    dirs: dict[str, Path | None]  # "input", "output", "temp"
    validated: dict[Any, tuple[bool, list[dict[str, Any]], Any]]


def _exists_annotated(ctx: _Context, name: Any) -> bool:
    """folder_paths.exists_annotated_filepath: ``x.png [output]`` names the output folder."""
    base = ctx.dirs["input"]
    for tag in ("output", "input", "temp"):
        suffix = f"[{tag}]"
        if name.endswith(suffix):  # a non-string raises AttributeError, as in ComfyUI
            name = name[: -len(suffix) - 1]
            base = ctx.dirs[tag]
            break
    if base is None:
        return False
    return os.path.exists(os.path.join(base, name))


def _input_specs(node_info: dict[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """(name, category, spec) of the required then optional inputs, in input_order."""
    out = []
    inputs = node_info.get("input", {})
    order = node_info.get("input_order", {})
    for category in ("required", "optional"):
        specs = inputs.get(category) or {}
        names = [n for n in order.get(category, []) if n in specs]
        names += [n for n in specs if n not in names]
        out += [(n, category, specs[n]) for n in names]
    return out


def _validate_inputs(ctx: _Context, item: Any) -> tuple[bool, list[dict[str, Any]], Any]:
    """execution.validate_inputs for one node; results are memoised in ``ctx.validated``.

    Long because it mirrors ComfyUI 0.3.64's ``execution.validate_inputs`` branch for branch
    (missing input, link, literal coercion, min/max, combo, custom validation), in its order:
    kept in one piece so the two can be read side by side when ComfyUI changes.
    """
    if item in ctx.validated:
        return ctx.validated[item]
    prompt = ctx.prompt
    try:
        inputs = prompt[item]["inputs"]
    except Exception as ex:
        raise _Traced(ex, [_FRAME_INPUTS]) from ex
    class_type = prompt[item]["class_type"]
    node_info = ctx.catalogue.node(class_type)
    assert node_info is not None  # validate_prompt checked every class_type first
    check = _FILE_CHECKS.get(class_type)
    checked_inputs = {check.input_name} if check else set()

    errs: list[dict[str, Any]] = []
    valid = True
    for x, category, spec in _input_specs(node_info):
        input_type = spec[0]
        extra = spec[1] if len(spec) > 1 else {}
        if x not in inputs:
            if category == "required":
                errs.append(_error("required_input_missing", "Required input is missing", x,
                                   {"input_name": x}))
            continue
        val = inputs[x]
        info = [copy.deepcopy(input_type), copy.deepcopy(extra)]
        if isinstance(val, list):
            if len(val) != 2:
                errs.append(_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
                    {"input_name": x, "input_config": info, "received_value": val}))
                continue
            o_id = val[0]
            try:
                o_class_type = prompt[o_id]["class_type"]
            except Exception as ex:
                raise _Traced(ex, [_FRAME_LINK_NODE]) from ex
            returns = tuple(ctx.catalogue.node(o_class_type)["output"])
            try:
                received_type = returns[val[1]]
            except Exception as ex:
                raise _Traced(ex, [_FRAME_LINK_SLOT]) from ex
            if not _types_match(received_type, input_type):
                errs.append(_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                    {"input_name": x, "input_config": info, "received_type": received_type,
                     "linked_node": val}))
                continue
            try:
                if _validate_inputs(ctx, o_id)[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                inner, frames = _exception_parts(ex)
                valid = False
                ctx.validated[o_id] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node",
                    str(inner),
                    {"input_name": x, "input_config": info, "exception_message": str(inner),
                     "exception_type": _full_type_name(type(inner)),
                     "traceback": [_FRAME_INNER_CALL, *frames], "linked_node": val})], o_id)
                continue
            continue

        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
            inputs[x] = val
        try:
            if input_type == "INT":
                val = int(val)
                inputs[x] = val
            if input_type == "FLOAT":
                val = float(val)
                inputs[x] = val
            if input_type == "STRING":
                val = str(val)
                inputs[x] = val
            if input_type == "BOOLEAN":
                val = bool(val)
                inputs[x] = val
        except Exception as ex:
            errs.append(_error(
                "invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                f"{x}, {val}, {ex}",
                {"input_name": x, "input_config": info, "received_value": val,
                 "exception_message": str(ex)}))
            continue
        if x in checked_inputs:
            continue
        if "min" in extra and val < extra["min"]:
            errs.append(_error(
                "value_smaller_than_min", "Value {} smaller than min of {}".format(val, extra["min"]),
                x, {"input_name": x, "input_config": info, "received_value": val}))
            continue
        if "max" in extra and val > extra["max"]:
            errs.append(_error(
                "value_bigger_than_max", "Value {} bigger than max of {}".format(val, extra["max"]),
                x, {"input_name": x, "input_config": info, "received_value": val}))
            continue
        options = combo_options(spec)
        if options is not None and val not in options:
            if len(options) > 20:
                list_info, input_config = f"(list of length {len(options)})", None
            else:
                list_info, input_config = str(options), info
            errs.append(_error(
                "value_not_in_list", "Value not in list", f"{x}: '{val}' not in {list_info}",
                {"input_name": x, "input_config": input_config, "received_value": val}))
            continue

    if check is not None:
        value = inputs.get(check.input_name, None) if isinstance(inputs, dict) else None
        if check.input_name not in inputs or isinstance(value, list):
            # A missing or linked input is left out of the call, which then lacks its argument.
            raise TypeError(
                f"{check.qualname}() missing 1 required positional argument: '{check.input_name}'")
        if not _exists_annotated(ctx, value):
            errs.append(_error(
                "custom_validation_failed", "Custom validation failed for node",
                f"{check.input_name} - {check.message.format(value)}",
                {"input_name": check.input_name}))

    result = (False, errs, item) if errs or valid is not True else (True, [], item)
    ctx.validated[item] = result
    return result


def _error(kind: str, message: str, details: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _rejected(error: dict[str, Any], node_errors: dict[str, Any]) -> ValidationResult:
    return ValidationResult(False, {"error": error, "node_errors": node_errors}, [], node_errors)


def validate_prompt(
    prompt: Any,
    catalogue: Catalogue,
    input_dir: Path,
    *,
    output_dir: Path | None = None,
    temp_dir: Path | None = None,
    partial_execution_targets: list[str] | None = None,
) -> ValidationResult:
    """Validate the ``prompt`` of a POST /prompt body as ComfyUI 0.3.64 does.

    ``prompt`` is ``body.get("prompt")``: None means the body had none (``no_prompt``).
    Literal values are coerced in place (``"8"`` -> ``8`` for an INT), as the real server does.
    ``output_dir``/``temp_dir`` serve LoadImage names annotated ``[output]``/``[temp]``.
    Raises ``PromptCrashed`` where the real server fails with HTTP 500.

    Long because it mirrors ComfyUI 0.3.64's ``execution.validate_prompt`` step for step
    (class types and outputs, each output's validation, node_errors attribution, the summary
    error), after the checks its ``post_prompt`` handler makes first.
    """
    if prompt is None:
        return _rejected(_error("no_prompt", "No prompt provided", "No prompt provided", {}), {})
    if not isinstance(prompt, dict):
        if isinstance(prompt, (list, str)) and len(prompt) == 0:
            return _rejected(_error("prompt_no_outputs", "Prompt has no outputs", "", {}), {})
        raise PromptCrashed(f"prompt is a {type(prompt).__name__}, not an object")

    outputs: list[str] = []
    for x, node in prompt.items():
        try:
            has_class = "class_type" in node
        except TypeError as ex:
            raise PromptCrashed(f"node {x!r}: {ex}") from ex
        if not has_class:
            return _rejected(_error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{x}'", {}), {})
        try:
            class_type = node["class_type"]
            hash(class_type)
        except TypeError as ex:
            raise PromptCrashed(f"node {x!r}: {ex}") from ex
        node_info = catalogue.node(class_type)
        if node_info is None:
            return _rejected(_error(
                "invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{x}'", {}), {})
        if node_info.get("output_node") is True:
            if partial_execution_targets is None or x in partial_execution_targets:
                outputs.append(x)
    if not outputs:
        return _rejected(_error("prompt_no_outputs", "Prompt has no outputs", "", {}), {})

    ctx = _Context(prompt, catalogue, {"input": input_dir, "output": output_dir, "temp": temp_dir}, {})
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for o in outputs:
        try:
            valid, reasons, _ = _validate_inputs(ctx, o)
        except Exception as ex:
            exc, frames = _exception_parts(ex)
            valid = False
            reasons = [_error(
                "exception_during_validation", "Exception when validating node", str(exc),
                {"exception_type": _full_type_name(type(exc)),
                 "traceback": [_FRAME_PROMPT_CALL, *frames]})]
            ctx.validated[o] = (False, reasons, o)
        if valid is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        # As in ComfyUI: every node that failed so far (not only this output's) gets `o`.
        for node_id, (node_valid, node_reasons, _) in ctx.validated.items():
            if node_valid is not True and len(node_reasons) > 0:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    if not good:
        details = "\n".join(
            f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        return _rejected(_error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}),
            node_errors)
    return ValidationResult(True, None, good, node_errors)
