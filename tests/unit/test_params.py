"""Parameter validation, injection into the graph, and the params JSON Schema."""

from __future__ import annotations

import base64
import copy
import json
import random
import tomllib
from typing import Any

import jsonschema
import pytest

from comfy_fleet import errors

from comfy_fleet.workflows import manifest, params

GRAPH: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png", "upload": "image"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "<text>", "clip": ["1", 0]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20, "cfg": 7.5,
                                                "sampler_name": "euler", "model": ["1", 0]}},
    "4": {"class_type": "Flag", "inputs": {"enabled": False}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out/pic"}},
    "10": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["3", 0],
                                                         "filename_prefix": "anim"}},
}

MANIFEST_TOML = """
description = "test"
[params.text]
node = "2"
field = "text"
type = "string"
required = true
max_length = 50
[params.image]
node = "1"
field = "image"
type = "image"
[params.seed]
node = "3"
field = "seed"
type = "seed"
[params.steps]
node = "3"
field = "steps"
type = "int"
default = 20
min = 1
max = 100
[params.cfg]
node = "3"
field = "cfg"
type = "float"
min = 0
max = 30
[params.sampler]
node = "3"
field = "sampler_name"
type = "choice"
choices = ["euler", "dpmpp_2m"]
[params.enabled]
node = "4"
field = "enabled"
type = "bool"
"""

M = manifest.parse_manifest(tomllib.loads(MANIFEST_TOML), GRAPH, name="t", source="t.toml")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def problems(p: Any, **kw: Any) -> dict[str, str]:
    with pytest.raises(errors.WorkflowParamsInvalid) as info:
        params.validate_params(M, p, **kw)
    assert info.value.message.startswith("invalid params for workflow 't': ")
    return {d["param"]: d["problem"] for d in info.value.details}


def test_defaults_applied_and_optional_left_out() -> None:
    resolved = params.validate_params(M, {"text": "a cat"}, rng=random.Random(1).randint)
    assert resolved["text"] == "a cat"
    assert resolved["steps"] == 20
    assert isinstance(resolved["seed"], int) and 0 <= resolved["seed"] <= params.DRAWN_SEED_MAX
    # no default, not required: the graph keeps its own value
    assert {"cfg", "sampler", "enabled", "image"}.isdisjoint(resolved)
    json.dumps(resolved)  # the resolved params are plain JSON, fit for the event log


def test_random_seed_uses_rng_and_explicit_seed_is_kept() -> None:
    calls: list[tuple[int, int]] = []

    def rng(lo: int, hi: int) -> int:
        calls.append((lo, hi))
        return 42

    assert params.validate_params(M, {"text": "x", "seed": "random"}, rng=rng)["seed"] == 42
    assert calls == [(0, params.DRAWN_SEED_MAX)]
    top = 2**64 - 1
    assert params.validate_params(M, {"text": "x", "seed": top}, rng=rng)["seed"] == top
    assert len(calls) == 1
    drawn = {params.validate_params(M, {"text": "x"})["seed"] for _ in range(5)}
    assert len(drawn) > 1  # the default rng draws fresh seeds


def test_all_problems_collected() -> None:
    found = problems(
        {
            "txt": "typo",
            "steps": 0,
            "cfg": "high",
            "sampler": "ddim",
            "enabled": 1,
            "seed": -1,
            "image": "not an image!",
        }
    )
    assert set(found) == {"txt", "text", "steps", "cfg", "sampler", "enabled", "seed", "image"}
    assert "unknown parameter" in found["txt"] and "text" in found["txt"]
    assert "missing" in found["text"]
    assert "minimum" in found["steps"]
    assert "number" in found["cfg"]
    assert "ddim" in found["sampler"] and "euler" in found["sampler"]
    assert "true or false" in found["enabled"]
    assert "minimum" in found["seed"]
    assert "base64" in found["image"]


@pytest.mark.parametrize(
    ("name", "value", "word"),
    [
        ("steps", True, "boolean"),  # bool is not int
        ("steps", 3.0, "float"),  # strict: no integral floats for int
        ("steps", "3", "string"),
        ("steps", 101, "maximum"),
        ("enabled", 0, "true or false"),
        ("cfg", True, "number"),
        ("cfg", float("nan"), "number"),
        ("cfg", 30.5, "maximum"),
        ("text", 5, "string"),
        ("text", "x" * 51, "limit is 50"),
        ("seed", 2**64, "maximum"),
        ("seed", "rand", "random"),
        ("seed", 1.0, "integer"),
        ("sampler", 1, "not one of"),
    ],
)
def test_type_strictness(name: str, value: Any, word: str) -> None:
    p = {"text": "ok", name: value}
    assert word in problems(p)[name]


def test_float_accepts_int() -> None:
    assert params.validate_params(M, {"text": "a", "cfg": 7})["cfg"] == 7.0


def test_global_string_limit() -> None:
    class Limits:
        max_string_length = 3
        max_image_bytes = 1000

    assert "limit is 3" in problems({"text": "abcd"}, limits=Limits())["text"]


def test_params_must_be_an_object() -> None:
    with pytest.raises(errors.WorkflowParamsInvalid):
        params.validate_params(M, ["text"])
    assert "missing" in problems(None)["text"]


def test_image_forms() -> None:
    raw = b"\x89PNG\r\n\x1a\nfake"
    assert params.classify_image_value(PNG) == ("base64", raw)
    assert params.classify_image_value("data:image/png;base64," + PNG) == ("base64", raw)
    assert params.classify_image_value(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == (
        "base64",
        raw,
    )
    assert params.classify_image_value(PNG[:12] + "\n" + PNG[12:]) == ("base64", raw)
    url = "https://example.com/a.png?x=1"
    assert params.classify_image_value(url) == ("url", url)
    resolved = params.validate_params(M, {"text": "x", "image": url})
    assert resolved["image"] == url


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("", "base64"),
        ("ftp://host/x.png", "scheme"),
        ("http:///nohost", "malformed URL"),
        ("https://exa mple.com/x", "whitespace"),
        ("data:image/png," + PNG, "base64"),
        ("data:text/plain;base64," + PNG, "not an image"),
        ("@@@@", "base64"),
        ("QUJD=A", "base64"),
    ],
)
def test_bad_image_values_name_the_param(value: str, word: str) -> None:
    with pytest.raises(errors.WorkflowParamsInvalid) as info:
        params.classify_image_value(value, param="photo")
    assert info.value.details[0]["param"] == "photo"
    assert word in info.value.message
    assert word in problems({"text": "x", "image": value})["image"]


def test_oversized_image_is_payload_too_large() -> None:
    class Limits:
        max_string_length = 100
        max_image_bytes = 8

    with pytest.raises(errors.PayloadTooLarge) as info:
        params.validate_params(M, {"text": "x", "image": PNG}, limits=Limits())
    assert info.value.status == 413 and info.value.details[0]["param"] == "image"
    # mixed with other problems, it is one 422 listing all of them
    assert "limit" in problems({"image": PNG}, limits=Limits())["image"]


def test_build_prompt_writes_values_and_never_mutates_the_graph() -> None:
    source = copy.deepcopy(GRAPH)
    tricky = 'a "quoted" {brace} \\ back\nslash ", "x": ["1", 0]}'
    resolved = params.validate_params(
        M,
        {"text": tricky, "image": PNG, "seed": 5, "cfg": 3, "sampler": "dpmpp_2m",
         "enabled": True},
    )
    prompt = params.build_prompt(
        GRAPH, M, resolved, task_id="task-1", image_names={"image": "fleet-task-1-image.png"}
    )
    assert GRAPH == source
    assert prompt["2"]["inputs"]["text"] == tricky  # verbatim, no JSON pasting
    assert json.loads(json.dumps(prompt))["2"]["inputs"]["text"] == tricky
    assert prompt["1"]["inputs"]["image"] == "fleet-task-1-image.png"
    assert prompt["3"]["inputs"]["seed"] == 5
    assert prompt["3"]["inputs"]["cfg"] == 3.0
    assert prompt["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert prompt["4"]["inputs"]["enabled"] is True
    assert prompt["9"]["inputs"]["filename_prefix"] == "fleet/task-1/pic"
    assert prompt["10"]["inputs"]["filename_prefix"] == "fleet/task-1/anim"
    assert prompt["2"]["inputs"]["clip"] == ["1", 0]
    prompt["3"]["inputs"]["model"].append("x")  # the copy is deep
    assert GRAPH["3"]["inputs"]["model"] == ["1", 0]


def test_build_prompt_refuses_missing_or_foreign_image_names() -> None:
    resolved = {"text": "x", "image": PNG}
    with pytest.raises(ValueError, match="image"):
        params.build_prompt(GRAPH, M, resolved, task_id="t")
    with pytest.raises(ValueError, match="text"):
        params.build_prompt(GRAPH, M, {"text": "x"}, task_id="t", image_names={"text": "a.png"})
    with pytest.raises(ValueError, match="task_id"):
        params.build_prompt(GRAPH, M, {"text": "x"}, task_id="../etc")


@pytest.mark.parametrize(
    ("original", "expected"),
    [("ComfyUI", "ComfyUI"), ("a/b/c", "c"), ("../../x", "x"), ("dir/", "output"),
     ("..", "output"), ("w\\in", "in"), ("%date:yyyy%_x", "%date:yyyy%_x")],
)
def test_task_filename_prefix(original: str, expected: str) -> None:
    assert params.task_filename_prefix(M, "abc", original) == f"fleet/abc/{expected}"


def test_params_json_schema() -> None:
    schema = params.params_json_schema(M, max_string_length=40)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["text"]
    props = schema["properties"]
    assert props["text"] == {"type": "string", "maxLength": 40}
    assert props["steps"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert props["cfg"]["type"] == "number"
    assert props["sampler"]["enum"] == ["euler", "dpmpp_2m"]
    assert props["enabled"] == {"type": "boolean"}
    assert props["seed"]["default"] == "random"
    assert "base64" in props["image"]["description"]

    validator = jsonschema.Draft202012Validator(schema)
    good = [
        {"text": "a"},
        {"text": "a", "seed": "random", "steps": 5, "cfg": 1.5, "sampler": "euler"},
        {"text": "a", "seed": 2**64 - 1, "enabled": True, "image": PNG},
    ]
    bad = [
        {},
        {"text": "a", "extra": 1},
        {"text": "a", "seed": "rand"},
        {"text": "a", "seed": -1},
        {"text": "a", "steps": 0},
        {"text": "a", "steps": True},
        {"text": "a", "sampler": "ddim"},
        {"text": "x" * 41},
    ]
    for example in good:
        assert validator.is_valid(example), example
        params.validate_params(M, example)  # the service agrees
    for example in bad:
        assert not validator.is_valid(example), example
        with pytest.raises(errors.InvalidRequest):
            params.validate_params(M, example, limits=params.DefaultLimits(max_string_length=40))
