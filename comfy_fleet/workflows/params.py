"""Request parameters of a workflow: validation, JSON Schema, and injection into the graph.

``validate_params`` turns a request's ``params`` into the *resolved* params: checked, defaults
applied, seeds drawn. The resolved dict is plain JSON (an image parameter keeps the request's
string: base64, a ``data:`` URL or an http(s) URL), so it can be recorded in the task's submitted
event and a re-dispatch builds the very same prompt. ``build_prompt`` then writes the resolved
values into a deep copy of the parsed graph, never by pasting text into JSON.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from comfy_fleet import errors
from comfy_fleet.workflows import graph as graph_module, model_params, param_spec
from comfy_fleet.workflows.manifest import Manifest, ParamSpec

#: A drawn seed stays below 2**53 so it survives every JSON reader, JavaScript's doubles included;
#: a client may still send any seed up to 2**64-1.
DRAWN_SEED_MAX: int = 2**53 - 1

#: The accepted forms of an image value, as told to clients.
IMAGE_FORMS: str = ("an image as base64, as a data: URL (data:image/png;base64,...), "
                    "or as an http(s) URL that the service fetches")

_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),(.*)$", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
_BASE64 = re.compile(r"^[A-Za-z0-9+/\-_]*={0,2}$")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ParamLimits(Protocol):
    """What ``validate_params`` needs from the settings (``comfy_fleet.config.Settings`` has both)."""

    @property
    def max_string_length(self) -> int: ...
    @property
    def max_image_bytes(self) -> int: ...


@dataclass(frozen=True)
class DefaultLimits:
    """Limits used when the caller passes none."""

    max_string_length: int = 10_000
    max_image_bytes: int = 20 * 1024 * 1024


#: ``rng(lo, hi)`` returns an int in ``[lo, hi]`` (``random.Random.randint`` fits).
Rng = Callable[[int, int], int]


def _secure_randint(lo: int, hi: int) -> int:
    return lo + secrets.randbelow(hi - lo + 1)


def validate_params(
    manifest: Manifest,
    params: Any,
    *,
    limits: ParamLimits | None = None,
    rng: Rng | None = None,
) -> dict[str, Any]:
    """Check a request's ``params`` against the manifest and return the resolved params.

    All problems are collected and raised together as ``errors.WorkflowParamsInvalid`` with
    ``details=[{"param": name, "problem": text}, ...]``; when the only problems are images over
    ``limits.max_image_bytes``, ``errors.PayloadTooLarge`` (413) instead. The resolved dict holds
    every given parameter, the defaults of the missing ones, and a drawn seed for each seed that
    is ``"random"`` or missing without an int default; a parameter with no default that is not
    required and not given is left out, so the graph keeps its own value.
    """
    limits = limits or DefaultLimits()
    draw = rng or _secure_randint
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise errors.WorkflowParamsInvalid(
            f"params of workflow {manifest.name!r} must be a JSON object",
            [{"param": None, "problem": "must be a JSON object"}],
        )
    problems: list[dict[str, Any]] = []
    too_large = 0
    unknown = sorted(str(k) for k in params if k not in manifest.params)
    for name in unknown:
        problems.append(
            {
                "param": name,
                "problem": "unknown parameter (this workflow takes: "
                + (", ".join(manifest.params) or "none")
                + ")",
            }
        )

    resolved: dict[str, Any] = {}
    for name, spec in manifest.params.items():
        if name in params:
            value = params[name]
        elif spec.required:
            problems.append({"param": name, "problem": "missing (required)"})
            continue
        elif spec.default is not None:
            value = spec.default
        elif spec.type == "seed":
            value = "random"
        else:
            continue  # the graph keeps its own value

        problem, over_size = _value_problem(spec, value, limits)
        if problem is not None:
            problems.append({"param": name, "problem": problem})
            too_large += over_size
            continue
        if spec.type == "seed" and value == "random":
            value = _draw_seed(spec, draw)
        elif spec.type == "float":
            value = float(value)
        resolved[name] = value

    if problems:
        summary = "; ".join(f"{p['param']}: {p['problem']}" for p in problems)
        message = f"invalid params for workflow {manifest.name!r}: {summary}"
        if too_large == len(problems):
            raise errors.PayloadTooLarge(message, problems)
        raise errors.WorkflowParamsInvalid(message, problems)
    return resolved


def _value_problem(spec: ParamSpec, value: Any, limits: ParamLimits) -> tuple[str | None, bool]:
    """Why ``value`` is not valid for ``spec`` (None when it is), and whether the only reason is
    an image over ``limits.max_image_bytes``."""
    if spec.type != "image":
        return param_spec.check_value(spec, value, max_string_length=limits.max_string_length), False
    problem = param_spec.check_value(spec, value)
    if problem is not None:
        return problem, False
    try:
        classify_image_value(value, max_bytes=limits.max_image_bytes, param=spec.name)
    except errors.PayloadTooLarge as exc:
        return exc.message, True
    except errors.WorkflowParamsInvalid as exc:
        return exc.details[0]["problem"], False
    return None, False


def _draw_seed(spec: ParamSpec, draw: Rng) -> int:
    lo = int(spec.min) if spec.min is not None else 0
    hi = int(spec.max) if spec.max is not None else param_spec.SEED_MAX
    if lo <= DRAWN_SEED_MAX:
        hi = min(hi, DRAWN_SEED_MAX)
    return draw(lo, hi)


def classify_image_value(
    value: Any, *, max_bytes: int | None = None, param: str | None = None
) -> tuple[str, bytes | str]:
    """Tell an image value's form: ``("base64", decoded bytes)`` or ``("url", url)``.

    Checks syntax only (a URL is not fetched, bytes are not opened as an image). Raises
    ``errors.WorkflowParamsInvalid`` naming ``param`` when the value is none of the accepted forms
    or does not decode, and ``errors.PayloadTooLarge`` when the decoded size exceeds ``max_bytes``.
    """

    def bad(problem: str) -> errors.WorkflowParamsInvalid:
        return errors.WorkflowParamsInvalid(
            f"{param or 'image'}: {problem}", [{"param": param, "problem": problem}]
        )

    if not isinstance(value, str) or not value.strip():
        raise bad(f"expected {IMAGE_FORMS}")
    text = value.strip()
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return "url", _check_url(text, bad)
    if lowered.startswith("data:"):
        match = _DATA_URL.match(text)
        if match is None:
            raise bad("malformed data: URL (expected data:<type>;base64,<data>)")
        media_type, options, payload = match.groups()
        if "base64" not in [o.strip().lower() for o in options.split(";") if o]:
            raise bad("a data: URL must be base64-encoded (data:<type>;base64,<data>)")
        if media_type and not media_type.strip().lower().startswith("image/"):
            raise bad(f"a data: URL of type {media_type!r} is not an image")
        text = payload
    elif "://" in text[:16]:
        raise bad(f"unsupported URL scheme; expected {IMAGE_FORMS}")
    return "base64", _decode_base64(text, max_bytes, param, bad)


def _check_url(url: str, bad: Callable[[str], errors.WorkflowParamsInvalid]) -> str:
    if len(url) > 4096:
        raise bad("URL longer than 4096 characters")
    if _WHITESPACE.search(url):
        raise bad("URL contains whitespace")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"malformed URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise bad("malformed URL: expected http(s)://host/...")
    if port == 0:
        raise bad("malformed URL: port 0")
    return url


def _decode_base64(
    text: str,
    max_bytes: int | None,
    param: str | None,
    bad: Callable[[str], errors.WorkflowParamsInvalid],
) -> bytes:
    data = _WHITESPACE.sub("", text)
    if not data:
        raise bad("empty image")
    # Reject by size before decoding: the decoded size is 3/4 of the text, give or take padding.
    if max_bytes is not None and len(data) * 3 // 4 > max_bytes + 2:
        problem = f"image is about {len(data) * 3 // 4} bytes; the limit is {max_bytes}"
        raise errors.PayloadTooLarge(
            f"{param or 'image'}: {problem}", [{"param": param, "problem": problem}]
        )
    if not _BASE64.match(data):
        raise bad(f"not valid base64 (expected {IMAGE_FORMS})")
    data += "=" * (-len(data) % 4)
    try:
        if "-" in data or "_" in data:
            decoded = base64.urlsafe_b64decode(data)
        else:
            decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"not valid base64: {exc}") from exc
    if not decoded:
        raise bad("empty image")
    if max_bytes is not None and len(decoded) > max_bytes:
        problem = f"image is {len(decoded)} bytes; the limit is {max_bytes}"
        raise errors.PayloadTooLarge(
            f"{param or 'image'}: {problem}", [{"param": param, "problem": problem}]
        )
    return decoded


def task_output_folder(manifest: Manifest, task_id: str) -> str:
    """The folder, relative to ComfyUI's output dir, that holds all of a task's output files."""
    if not _SAFE_SEGMENT.match(task_id):
        raise ValueError(f"task_id {task_id!r} is not a safe file name segment")
    return f"{manifest.output_prefix}/{task_id}"


def task_filename_prefix(manifest: Manifest, task_id: str, original: str) -> str:
    """``<output_prefix>/<task_id>/<basename of the original prefix>``.

    Unique per task, so outputs never collide, ComfyUI's cache never skips the save node, and
    cleanup knows the task's files. Only the original's last path segment is kept, which also
    keeps a prefix like ``../../x`` inside the task's folder.
    """
    base = re.split(r"[\\/]", original)[-1].strip()
    if base in ("", ".", ".."):
        base = "output"
    return f"{task_output_folder(manifest, task_id)}/{base}"


def apply_params(
    graph: Mapping[str, Mapping[str, Any]],
    manifest: Manifest,
    resolved: Mapping[str, Any],
    *,
    image_names: Mapping[str, str] | None = None,
    model_names: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """A deep copy of ``graph`` with the resolved values in their node inputs, the nodes of
    ``bypass`` parameters left out taken out. Images get their upload's name from
    ``image_names``, models by URL their pulled name from ``model_names``; None leaves those
    inputs as they are (routing checks ignore them). The copy is a JSON round trip, ten times
    faster than copy.deepcopy (a batch builds 1,000 prompts)."""
    prompt: dict[str, dict[str, Any]] = orjson.loads(orjson.dumps(dict(graph)))
    gone = model_params.bypassed_nodes(manifest.params, resolved)
    for name, value in resolved.items():
        spec = manifest.params.get(name)
        if spec is None:
            raise ValueError(f"workflow {manifest.name!r} has no parameter {name!r}")
        if spec.node in gone:
            continue
        if spec.type == "image" or (spec.type == "model" and isinstance(value, Mapping)):
            if (names := image_names if spec.type == "image" else model_names) is None:
                continue
            if name not in names:
                raise ValueError(f"no file name for {spec.type} parameter {name!r}")
            value = names[name]
        prompt[spec.node]["inputs"][spec.field] = copy.deepcopy(value)
    return model_params.bypass(prompt, gone)


def build_prompt(
    graph: Mapping[str, Mapping[str, Any]],
    manifest: Manifest,
    resolved: Mapping[str, Any],
    *,
    task_id: str,
    image_names: Mapping[str, str] | None = None,
    model_names: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The prompt to send to ComfyUI for one task; ``graph`` is left untouched. Writes the
    resolved values (image parameters: their uploaded file names from ``image_names``, one for
    each image parameter in ``resolved``), then points every node's literal ``filename_prefix``
    at ``task_filename_prefix(...)``."""
    names = dict(image_names or {})
    for name in names:
        spec = manifest.params.get(name)
        if spec is None or spec.type != "image":
            raise ValueError(f"{name!r} is not an image parameter of workflow {manifest.name!r}")
    prompt = apply_params(
        graph, manifest, resolved, image_names=names, model_names=dict(model_names or {})
    )
    for node_id in graph_module.prefix_nodes(prompt):
        inputs = prompt[node_id]["inputs"]
        prefix = inputs["filename_prefix"]
        inputs["filename_prefix"] = task_filename_prefix(manifest, task_id, prefix)
    return prompt


def params_json_schema(
    manifest: Manifest, *, max_string_length: int | None = None
) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a request's ``params`` object for this workflow.

    One difference from ``validate_params``: JSON Schema calls ``3.0`` an integer, the service
    does not (send ``3``).
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in manifest.params.items():
        properties[name] = _param_schema(spec, max_string_length)
        if spec.required:
            required.append(name)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"params of {manifest.name}",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if manifest.description:
        schema["description"] = manifest.description
    if required:
        schema["required"] = required
    return schema


def _param_schema(spec: ParamSpec, max_string_length: int | None) -> dict[str, Any]:
    s: dict[str, Any] = {}
    description = spec.description
    if spec.type == "string":
        s["type"] = "string"
        limits = [x for x in (spec.max_length, max_string_length) if x is not None]
        if limits:
            s["maxLength"] = min(limits)
    elif spec.type == "bool":
        s["type"] = "boolean"
    elif spec.type in ("int", "float"):
        s["type"] = "integer" if spec.type == "int" else "number"
        if spec.min is not None:
            s["minimum"] = spec.min
        if spec.max is not None:
            s["maximum"] = spec.max
    elif spec.type == "seed":
        lo = spec.min if spec.min is not None else 0
        hi = spec.max if spec.max is not None else param_spec.SEED_MAX
        s["oneOf"] = [
            {"type": "integer", "minimum": lo, "maximum": hi},
            {"const": "random"},
        ]
        s["default"] = "random"
        extra = 'An integer seed, or "random" (the default) for a fresh one per task.'
        description = f"{description} {extra}".strip()
    elif spec.type == "choice":
        assert spec.choices is not None
        s["enum"] = list(spec.choices)
    elif spec.type == "image":
        s["type"] = "string"
        extra = f"Takes {IMAGE_FORMS}."
        description = f"{description} {extra}".strip()
    elif spec.type == "model":
        s.update(model_params.json_schema(spec))
        description = f'{description} A model file name, or {{"url", "sha256"}}.'.strip()
    if spec.default is not None:
        s["default"] = spec.default
    if description:
        s["description"] = description
    return s
