"""Model files given by name, the pure parts: the folder → files map read from an endpoint's
/object_info (the recorded real one, as the stand-in fills it), what a task needs of its model
parameters or raw graph, its routing labels, and the fit check that gives a task only to an
endpoint holding every file it names."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from comfy_fleet import errors
from comfy_fleet.log import events, task_state
from comfy_fleet.policies import routing
from comfy_fleet.workflows import graph as graph_module, manifest as manifest_module
from comfy_fleet.workflows import model_files, raw_graph
from comfy_fleet.workflows import registry as workflow_registry
from comfy_standin import validation
from tests.unit import test_model_params

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
RECORDED = Path(validation.DATA_FILE)

#: checkpoint (1) → LoRA (2) → users, and a custom loader no table knows (5)
GRAPH: dict[str, Any] = {
    **test_model_params.GRAPH,
    "5": {"class_type": "CustomLoader", "inputs": {"ckpt_name": "custom.gguf"}},
}


def manifest(params: dict[str, Any]) -> manifest_module.Manifest:
    return manifest_module.parse_manifest({"params": params}, GRAPH, name="w", source="w.toml")


# --- the folder map from /object_info -------------------------------------------------------------


def test_every_loader_input_of_the_table_is_a_combo_of_the_recorded_server() -> None:
    info = json.loads(RECORDED.read_text())
    for (cls, name), folder in model_files.LOADER_INPUTS.items():
        spec = graph_module.input_spec(info, cls, name)
        assert graph_module.combo_choices(spec) is not None, (cls, name, folder)


def test_the_table_agrees_with_the_stand_ins_loaders() -> None:
    standin = {
        (cls, name): folder
        for folder, inputs in validation.MODEL_INPUTS.items() for cls, name in inputs
    }
    assert standin == dict(model_files.LOADER_INPUTS)
    assert dict(model_files.FOLDER_ALIASES) == validation.FOLDER_ALIASES


def test_the_files_of_each_folder_are_read_off_the_loaders_choices() -> None:
    info = validation.Catalogue.load({
        "checkpoints": ["sd15.safetensors", "sub/xl.safetensors"], "loras": ["a.safetensors"],
        "unet": ["flux1-dev.safetensors"], "clip": ["clip_l.safetensors"],
        "upscale_models": ["4x.pth"],
    }).object_info()
    files = model_files.held(info)
    assert files["checkpoints"] == {"sd15.safetensors", "sub/xl.safetensors"}
    assert files["loras"] == {"a.safetensors"}
    assert files["diffusion_models"] == {"flux1-dev.safetensors"}  # the legacy `unet`
    assert files["text_encoders"] == {"clip_l.safetensors"}
    assert files["upscale_models"] == {"4x.pth"}  # a COMBO-typed input (V3 node)
    assert files["controlnet"] == frozenset()  # a loader with nothing to list
    assert "pixel_space" in files["vae"]  # VAELoader's built-in choice: a name it takes
    counted = model_files.counts(files)
    assert counted["checkpoints"] == 2 and list(counted) == sorted(counted)


def test_an_endpoint_without_a_folders_loaders_reports_no_such_folder() -> None:
    info = {"LoraLoader": {"input": {"required": {"lora_name": [["a.safetensors", 3]]}}},
            "CustomLoader": {"input": {"required": {"ckpt_name": [["c.gguf"]]}}}}
    assert model_files.held(info) == {"loras": frozenset({"a.safetensors"})}
    assert model_files.held({}) == {}


def test_the_normalised_node_info_keeps_the_model_choices() -> None:
    # The router learns the files from the node info the endpoint reports (`raw_graph.normalised`).
    info = validation.Catalogue.load({"loras": ["a.safetensors"]}).object_info()
    assert model_files.held(raw_graph.normalised(info)) == model_files.held(info)
    other = validation.Catalogue.load({"loras": ["b.safetensors"]}).object_info()
    assert raw_graph.digest(raw_graph.normalised(info)) != raw_graph.digest(raw_graph.normalised(other))


# --- what a task needs ----------------------------------------------------------------------------


def test_a_model_parameter_given_by_name_needs_its_file_in_its_loaders_folder() -> None:
    m = manifest({
        "lora": {"node": "2", "field": "lora_name", "type": "model", "folder": "loras",
                 "bypass": True},
        "ckpt": {"node": "1", "field": "ckpt_name", "type": "model", "folder": "checkpoints"},
        "custom": {"node": "5", "field": "ckpt_name", "type": "model", "folder": "checkpoints"},
    })
    sha = "a" * 64
    needs = model_files.of_params(GRAPH, m.params, {"lora": "style.safetensors"})
    # the left-out ckpt keeps the graph's own file; the custom loader's folder is not known
    assert needs == [
        {"param": "lora", "folder": "loras", "filename": "style.safetensors"},
        {"param": "ckpt", "folder": "checkpoints", "filename": "base.safetensors"},
    ]
    by_url = model_files.of_params(
        GRAPH, m.params, {"lora": {"url": "https://x/y", "sha256": sha}, "ckpt": "xl.safetensors"})
    assert by_url == [{"param": "ckpt", "folder": "checkpoints", "filename": "xl.safetensors"}]
    # a bypassed LoRA left out needs nothing
    assert [n["param"] for n in model_files.of_params(GRAPH, m.params, {})] == ["ckpt"]
    assert model_files.labels(needs) == [
        "file:loras/style.safetensors", "file:checkpoints/base.safetensors"]


def test_a_choice_of_checkpoints_needs_the_one_chosen() -> None:
    m = manifest({"ckpt": {"node": "1", "field": "ckpt_name", "type": "choice",
                           "choices": ["base.safetensors", "xl.safetensors"]}})
    assert model_files.of_params(GRAPH, m.params, {"ckpt": "xl.safetensors"}) == [
        {"param": "ckpt", "folder": "checkpoints", "filename": "xl.safetensors"}]


def test_the_shipped_text2img_needs_its_lora_only_when_given_by_name() -> None:
    reg, problems = workflow_registry.WorkflowRegistry.load(WORKFLOWS)
    assert problems == []
    wf = reg.get("text2img")
    assert model_files.of_params(wf.graph, wf.manifest.params, {"text": "t"}) == []
    assert model_files.of_params(wf.graph, wf.manifest.params, {"lora": "fox.safetensors"}) == [
        {"param": "lora", "folder": "loras", "filename": "fox.safetensors"}]


def test_a_raw_graph_needs_the_files_its_known_loaders_name() -> None:
    assert model_files.of_graph(GRAPH) == [
        {"node_id": "1", "folder": "checkpoints", "filename": "base.safetensors"},
        {"node_id": "2", "folder": "loras", "filename": "x.safetensors"},
    ]


def test_labels_round_trip_and_their_length_is_bounded() -> None:
    needs = [{"folder": "clip", "filename": "sub/t5.safetensors"},
             {"folder": "text_encoders", "filename": "sub/t5.safetensors"}]
    labels = model_files.labels(needs)
    assert labels == ["file:text_encoders/sub/t5.safetensors"]  # aliases meet, once
    assert model_files.needs_of_labels([*labels, "gpu", "model:" + "a" * 64]) == {
        ("text_encoders", "sub/t5.safetensors")}
    assert not model_files.too_long(needs)
    assert model_files.too_long([{"folder": "loras", "filename": "x" * 2000}])
    m = manifest({"ckpt": {"node": "1", "field": "ckpt_name", "type": "model",
                           "folder": "checkpoints"}})
    with pytest.raises(errors.WorkflowParamsInvalid) as caught:
        model_files.of_params(GRAPH, m.params, {"ckpt": "x" * 2000})
    assert caught.value.code == "params_invalid" and caught.value.details[0]["param"] == "ckpt"


# --- the fit check --------------------------------------------------------------------------------


def test_an_endpoint_takes_a_task_only_when_it_holds_every_file() -> None:
    ep = routing.EndpointLoad("a", connected=True, labels=frozenset({"gpu"}))
    labels = ["gpu", "file:loras/a.safetensors", "file:checkpoints/base.safetensors"]
    assert not ep.can_take("text2img", labels)  # its files are not known yet: the task waits
    ep.model_files = {"loras": frozenset({"a.safetensors"}),
                      "checkpoints": frozenset({"base.safetensors"})}
    assert ep.can_take("text2img", labels)
    assert not ep.can_take("text2img", [*labels, "file:loras/b.safetensors"])
    assert not ep.can_take("text2img", ["file:vae/ae.safetensors"])  # no such folder there
    assert not ep.can_take("text2img", [*labels, "cpu"])  # the other labels still count
    assert ep.can_take("text2img", ["gpu"])  # a task naming no file is not held back
    assert model_files.holds({("loras", "a.safetensors")}, ep.model_files)
    assert not model_files.holds({("loras", "b.safetensors"), ("loras", "a.safetensors")},
                                 ep.model_files)


def test_a_task_naming_a_file_goes_only_to_an_endpoint_holding_it() -> None:
    a = routing.EndpointLoad("a", connected=True, model_files={"loras": frozenset({"x"})})
    b = routing.EndpointLoad("b", connected=True, model_files={"loras": frozenset({"y"})})
    rng = random.Random(1)
    for _ in range(5):
        picked = routing.pick_endpoint([a, b], 2, rng, workflow="w", labels=["file:loras/y"])
        assert picked is b
    assert routing.pick_endpoint([a, b], 2, rng, workflow="w", labels=["file:loras/z"]) is None


# --- the task's record ----------------------------------------------------------------------------


def test_a_task_recorded_before_model_files_folds_without_them() -> None:
    old = {"workflow": "text2img", "workflow_version": "v1", "params": {"lora": "a"},
           "prompt": {}, "client_task_id": None, "callback_url": None, "priority": 0,
           "request_hash": "h", "origin": "tasks", "inputs": [], "required_labels": []}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state = task_state.apply(None, "t", 1, at, events.decode("task.submitted", 1, old))
    assert state.model_files == [] and task_state.to_view(state)["model_files"] == []

    needs = [{"param": "lora", "folder": "loras", "filename": "a"}]
    new = events.TaskSubmitted(workflow="text2img", workflow_version="v1", params={"lora": "a"},
                               required_labels=model_files.labels(needs), model_files=needs)
    again = events.decode("task.submitted", 1, new.payload())
    state = task_state.apply(None, "t", 1, at, again)
    assert task_state.to_view(state)["model_files"] == [
        {"param": "lora", "node_id": None, "folder": "loras", "filename": "a"}]
    assert state.required_labels == ["file:loras/a"]
