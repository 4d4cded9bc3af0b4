"""One workflow parameter: its spec (``ParamSpec``) and the check of a value against it.

``comfy_fleet.workflows.manifest`` builds the specs from a manifest's ``[params.<name>]`` tables
(and checks each default with ``check_value``); ``comfy_fleet.workflows.params`` checks a
request's values with ``check_value``. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: The parameter types a manifest may declare.
PARAM_TYPES: tuple[str, ...] = (
    "string", "int", "float", "bool", "seed", "image", "choice", "model",
)

#: The largest seed ComfyUI accepts (its INT inputs are unsigned 64-bit).
SEED_MAX: int = 2**64 - 1

#: A model given by URL names its content: 64 lower-case hex digits of its sha256.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: The longest model file name or URL accepted.
MODEL_VALUE_MAX = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class ParamSpec:
    """One request parameter and where it goes in the graph."""

    name: str
    #: Node id in the graph that receives the value.
    node: str
    #: Input of that node that receives the value (always a literal in the graph, never a link).
    field: str
    #: One of PARAM_TYPES.
    type: str
    required: bool = False
    #: Applied when the request leaves the parameter out; None means "keep the graph's value"
    #: (for ``seed``: draw a fresh one).
    default: Any = None
    min: int | float | None = None
    max: int | float | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None
    description: str = ""
    #: ``model`` parameters: the ComfyUI model folder the file goes to (``loras``, …).
    folder: str | None = None
    #: Left out of the request, the parameter's node is bypassed: taken out of the prompt, each
    #: link to its output ``i`` going to its ``i``-th linked input (``params.bypassed``).
    bypass: bool = False




def check_value(spec: ParamSpec, value: Any, *, max_string_length: int | None = None) -> str | None:
    """Why ``value`` is not valid for ``spec`` (None when it is); images are checked elsewhere.

    Strict on purpose: ``True`` is not an int, ``3.0`` is not an int (clients should send what the
    schema says), but an int is a fine float.
    """
    t = spec.type
    if t == "string":
        if not isinstance(value, str):
            return f"expected a string, got {_kind(value)}"
        limits = [x for x in (spec.max_length, max_string_length) if x is not None]
        if limits and len(value) > min(limits):
            return f"is {len(value)} characters long; the limit is {min(limits)}"
        return None
    if t == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {_kind(value)}"
    if t in ("int", "seed"):
        if t == "seed" and value == "random":
            return None
        if not is_int(value):
            want = "an integer or \"random\"" if t == "seed" else "an integer"
            return f"expected {want}, got {_kind(value)}"
        lo = spec.min if spec.min is not None else (0 if t == "seed" else None)
        hi = spec.max if spec.max is not None else (SEED_MAX if t == "seed" else None)
        return _range_problem(value, lo, hi)
    if t == "float":
        if not is_number(value):
            return f"expected a number, got {_kind(value)}"
        return _range_problem(value, spec.min, spec.max)
    if t == "choice":
        assert spec.choices is not None
        if not any(_same_choice(value, c) for c in spec.choices):
            return f"{value!r} is not one of {', '.join(repr(c) for c in spec.choices)}"
        return None
    if t == "image":
        return None if isinstance(value, str) else f"expected a string, got {_kind(value)}"
    if t == "model":
        return model_problem(value)
    return f"unknown type {t!r}"


def model_problem(value: Any) -> str | None:
    """Why ``value`` is neither a model file name nor ``{"url", "sha256"}`` (None when it is).

    The URL's syntax only: the policy check and the fetch come later (``serve_app.models``)."""
    if isinstance(value, str):
        if not value or len(value) > MODEL_VALUE_MAX:
            return f"a model file name has 1 to {MODEL_VALUE_MAX} characters"
        parts = value.split("/")
        if _CONTROL.search(value) or any(p in ("", ".", "..") for p in parts):
            return f"{value!r} is not a model file name (relative, no '..', no backslash)"
        return None
    if not isinstance(value, dict):
        return f"expected a model file name or {{\"url\", \"sha256\"}}, got {_kind(value)}"
    missing = [k for k in ("url", "sha256") if k not in value]
    extra = sorted(str(k) for k in value if k not in ("url", "sha256"))
    if missing or extra:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown key {', '.join(extra)}"] if extra else []
        return f"a model by URL is {{\"url\", \"sha256\"}}: {'; '.join(what)}"
    url, sha = value["url"], value["sha256"]
    if not isinstance(sha, str) or not SHA256_HEX.match(sha):
        return "sha256: expected 64 lower-case hex digits"
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return "url: expected an http(s) URL"
    if len(url) > MODEL_VALUE_MAX or _CONTROL.search(url) or any(c.isspace() for c in url):
        return f"url: not a URL (whitespace, control characters, or over {MODEL_VALUE_MAX})"
    return None


def _same_choice(value: Any, choice: Any) -> bool:
    # Equal and of the same JSON kind: True is not 1, "1" is not 1, but 2 matches a float 2.0.
    if isinstance(value, bool) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    if isinstance(choice, float) and isinstance(value, int):
        return value == choice
    return type(value) is type(choice) and value == choice


def _range_problem(value: float, lo: float | None, hi: float | None) -> str | None:
    if lo is not None and value < lo:
        return f"{value!r} is below the minimum {lo!r}"
    if hi is not None and value > hi:
        return f"{value!r} is above the maximum {hi!r}"
    return None


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON's integers)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and math.isfinite(v)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {json.dumps(v)}"
    if isinstance(v, int | float):
        return f"{type(v).__name__} {v!r}"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
