"""comfy_standin.validation against the real server's recorded answers (trace d) and the prototype workflows."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfy_standin import validation

from tests.support.shared import PROTOTYPES, TRACES
FLUX_MODELS = {
    "diffusion_models": ["flux1-dev.safetensors"],
    "vae": ["ae.safetensors"],
    "clip": ["t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors"],
}


def _recorded_prompt_posts() -> list[dict[str, Any]]:
    trace = json.loads((TRACES / "d_invalid_prompts.json").read_text())
    return [
        e for e in trace["events"]
        if e["kind"] == "http" and e["request"]["method"] == "POST"
        and e["request"]["path"] == "/prompt" and "json" in e["request"]
    ]


RECORDED = _recorded_prompt_posts()


@pytest.fixture(scope="module")
def catalogue() -> validation.Catalogue:
    return validation.Catalogue.load()


@pytest.mark.parametrize("event", RECORDED, ids=[str(e["seq"]) for e in RECORDED])
def test_recorded_answers_are_reproduced(event: dict[str, Any], catalogue, tmp_path: Path) -> None:
    body = copy.deepcopy(event["request"]["json"])
    recorded = event["response"]
    result = validation.validate_prompt(body.get("prompt"), catalogue, tmp_path)
    if recorded["status"] == 400:
        assert not result.ok
        assert result.error_body == recorded["json"]
    else:
        assert recorded["status"] == 200
        assert result.ok and result.error_body is None
        assert result.node_errors == recorded["json"]["node_errors"]
        # The history entry's prompt[4] is what the real server ran.
        history = _history_outputs(recorded["json"]["prompt_id"])
        assert result.outputs_to_execute == history


def _history_outputs(prompt_id: str) -> list[str]:
    trace = json.loads((TRACES / "d_invalid_prompts.json").read_text())
    for e in trace["events"]:
        if e["kind"] == "http" and e["request"]["path"] == f"/history/{prompt_id}":
            return e["response"]["json"][prompt_id]["prompt"][4]
    raise AssertionError("no history of the accepted prompt in trace d")


def test_every_recorded_kind_is_covered() -> None:
    kinds = set()
    for e in RECORDED:
        body = e["response"]["json"]
        kinds.add(body.get("error", {}).get("type"))
        for node in body["node_errors"].values():
            kinds.update(err["type"] for err in node["errors"])
    assert {"no_prompt", "invalid_prompt", "prompt_no_outputs", "prompt_outputs_failed_validation",
            "required_input_missing", "value_bigger_than_max", "invalid_input_type",
            "custom_validation_failed", "exception_during_validation", "return_type_mismatch",
            "value_not_in_list"} <= kinds


def _empty_image_prompt(**inputs: Any) -> dict[str, Any]:
    values = {"width": 8, "height": 8, "batch_size": 1, "color": 0, **inputs}
    return {
        "1": {"class_type": "EmptyImage", "inputs": values},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def test_value_below_min_mirrors_the_above_max_shape(catalogue, tmp_path: Path) -> None:
    spec = catalogue.node("EmptyImage")["input"]["required"]["width"]
    low = spec[1]["min"] - 1
    result = validation.validate_prompt(_empty_image_prompt(width=low), catalogue, tmp_path)
    (err,) = result.error_body["node_errors"]["1"]["errors"]
    assert err == {
        "type": "value_smaller_than_min",
        "message": f"Value {low} smaller than min of {spec[1]['min']}",
        "details": "width",
        "extra_info": {"input_name": "width", "input_config": spec, "received_value": low},
    }


def test_numeric_strings_are_coerced_in_place(catalogue, tmp_path: Path) -> None:
    prompt = _empty_image_prompt(width="16", color="255")
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    assert result.ok and result.node_errors == {}
    assert prompt["1"]["inputs"]["width"] == 16 and prompt["1"]["inputs"]["color"] == 255
    bad = validation.validate_prompt(_empty_image_prompt(height="8.5"), catalogue, tmp_path)
    (err,) = bad.error_body["node_errors"]["1"]["errors"]
    assert err["type"] == "invalid_input_type"
    assert err["details"] == "height, 8.5, invalid literal for int() with base 10: '8.5'"


def test_several_errors_on_one_node_are_all_reported(catalogue, tmp_path: Path) -> None:
    prompt = _empty_image_prompt(width=0, height="abc")
    del prompt["1"]["inputs"]["color"]
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    kinds = [e["type"] for e in result.error_body["node_errors"]["1"]["errors"]]
    assert sorted(kinds) == ["invalid_input_type", "required_input_missing", "value_smaller_than_min"]
    # Only errors of the output node itself reach the top-level details.
    assert result.error_body["error"]["details"] == ""


def _load_image_prompt(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def test_load_image_checks_the_input_folder(catalogue, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "sub" / "x.png").write_bytes(b"png")
    for name in ("a.png", "sub/x.png"):
        assert validation.validate_prompt(_load_image_prompt(name), catalogue, tmp_path).ok
    missing = validation.validate_prompt(_load_image_prompt("sub/y.png"), catalogue, tmp_path)
    (err,) = missing.error_body["node_errors"]["1"]["errors"]
    assert err["details"] == "image - Invalid image file: sub/y.png"


def test_load_image_annotated_output_name(catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.png").write_bytes(b"png")
    prompt = _load_image_prompt("r.png [output]")
    assert validation.validate_prompt(prompt, catalogue, tmp_path, output_dir=out).ok
    assert not validation.validate_prompt(_load_image_prompt("r.png"), catalogue, tmp_path).ok


def test_link_from_an_inner_node_to_a_missing_node(catalogue, tmp_path: Path) -> None:
    prompt = {
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    (err,) = result.error_body["node_errors"]["2"]["errors"]
    assert err["type"] == "exception_during_inner_validation"
    assert err["details"] == "'99'"
    assert err["extra_info"]["exception_type"] == "KeyError"
    assert err["extra_info"]["linked_node"] == ["2", 0]
    assert result.error_body["node_errors"]["2"]["dependent_outputs"] == ["3"]


@pytest.mark.parametrize(("link", "details"), [([1, 0], "1"), (["1", 5], "tuple index out of range")])
def test_bad_links_of_an_output_node(link: list[Any], details: str, catalogue, tmp_path) -> None:
    prompt = _empty_image_prompt()
    prompt["2"]["inputs"]["images"] = link
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    (err,) = result.error_body["node_errors"]["2"]["errors"]
    assert (err["type"], err["details"]) == ("exception_during_validation", details)


def test_no_outputs_among_partial_targets(catalogue, tmp_path: Path) -> None:
    result = validation.validate_prompt(
        _empty_image_prompt(), catalogue, tmp_path, partial_execution_targets=["1"])
    assert result.error_body["error"]["type"] == "prompt_no_outputs"


@pytest.mark.parametrize("prompt", [5, "abc", {"1": 7}, {"1": {"class_type": ["x"]}}])
def test_bodies_that_crash_the_real_server(prompt: Any, catalogue, tmp_path: Path) -> None:
    with pytest.raises(validation.PromptCrashed):
        validation.validate_prompt(prompt, catalogue, tmp_path)


def _prototype(name: str, input_dir: Path) -> dict[str, Any]:
    prompt = json.loads((PROTOTYPES / f"{name}.json").read_text())
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if value == "<text>":
                node["inputs"][key] = "a cat"
            elif value == "<image>":
                (input_dir / "src.png").write_bytes(b"png")
                node["inputs"][key] = "src.png"
    return prompt


@pytest.mark.parametrize("name", ["text2img", "img2img"])
def test_prototype_workflows_pass_with_their_models(name: str, tmp_path: Path) -> None:
    catalogue = validation.Catalogue.load(FLUX_MODELS)
    result = validation.validate_prompt(_prototype(name, tmp_path), catalogue, tmp_path)
    assert result.ok and result.node_errors == {}
    assert result.outputs_to_execute == [
        k for k, v in _prototype(name, tmp_path).items() if v["class_type"] == "SaveImage"]


@pytest.mark.parametrize("name", ["text2img", "img2img"])
def test_prototype_workflows_fail_without_their_models(name: str, tmp_path: Path) -> None:
    catalogue = validation.Catalogue.load({"vae": ["other.safetensors"]})
    prompt = _prototype(name, tmp_path)
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    assert not result.ok
    assert result.error_body["error"]["type"] == "prompt_outputs_failed_validation"
    loaders = {k: v for k, v in prompt.items() if v["class_type"] in
               {"VAELoader", "DualCLIPLoader", "UNETLoader"}}
    assert set(result.error_body["node_errors"]) == set(loaders)
    for node_id, node in result.error_body["node_errors"].items():
        for err in node["errors"]:
            assert err["type"] == "value_not_in_list"
            name_ = err["extra_info"]["input_name"]
            value = loaders[node_id]["inputs"][name_]
            options = catalogue.node(node["class_type"])["input"]["required"][name_][0]
            assert err["details"] == f"{name_}: '{value}' not in {options}"
            assert err["extra_info"]["input_config"][0] == options


def test_catalogue_fills_model_lists_and_keeps_fixed_entries() -> None:
    recorded = validation.Catalogue.load()
    filled = validation.Catalogue.load(
        {"checkpoints": ["b.ckpt", "a.ckpt"], "unet": ["u.safetensors"], "vae": ["v.pt"],
         "upscale_models": ["4x.pth"]})
    assert filled.node("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0] == [
        "a.ckpt", "b.ckpt"]
    assert filled.node("UNETLoader")["input"]["required"]["unet_name"][0] == ["u.safetensors"]
    fixed = recorded.node("VAELoader")["input"]["required"]["vae_name"][0]
    assert filled.node("VAELoader")["input"]["required"]["vae_name"][0] == ["v.pt", *fixed]
    assert filled.node("UpscaleModelLoader")["input"]["required"]["model_name"][1]["options"] == [
        "4x.pth"]
    # The shared recording is untouched and loads are cached.
    assert recorded.node("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0] == []
    assert validation.Catalogue.load() is recorded
    assert filled.model_files("diffusion_models") == ["u.safetensors"]


def test_catalogue_views(tmp_path: Path) -> None:
    catalogue = validation.Catalogue.load()
    recorded = json.loads((TRACES / "object_info_full.json").read_text())
    assert catalogue.object_info() == recorded
    assert catalogue.node("NoSuchNode") is None
    assert catalogue.output_nodes() == {k for k, v in recorded.items() if v["output_node"]}
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    info = catalogue.object_info(tmp_path)
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["a.jpg", "b.png"]
    assert catalogue.object_info()["LoadImage"]["input"]["required"]["image"][0] == []
