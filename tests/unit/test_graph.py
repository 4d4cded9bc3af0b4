"""Helpers on API-format graphs and object_info: classes, models, outputs, can_run."""

from __future__ import annotations

import copy
from typing import Any

from comfy_fleet.workflows import graph

INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["sd15.safetensors"], {}]}},
        "category": "loaders",
        "output_node": False,
    },
    "MyLoader": {  # a custom loader with an unusual input name, V3 combo form
        "input": {"required": {"weights": ["COMBO", {"options": ["w.gguf"]}],
                               "mode": ["COMBO", {"options": ["fast", "slow"]}]}},
        "category": "custom/loaders",
        "output_node": False,
    },
    "LoadImage": {"input": {"required": {"image": [[], {"image_upload": True}]}},
                  "output_node": False},
    "KSampler": {"input": {"required": {"seed": ["INT", {}], "sampler_name": [["euler", "ddim"]],
                                        "model": ["MODEL"]}},
                 "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}},
                  "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True},
}

GRAPH: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "2": {"class_type": "MyLoader", "inputs": {"weights": "w.gguf", "mode": "fast"}},
    "3": {"class_type": "LoadImage", "inputs": {"image": "in.png", "upload": "image"}},
    "4": {"class_type": "KSampler", "inputs": {"seed": 1, "sampler_name": "euler",
                                               "model": ["1", 0]}},
    "10": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    "9": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
}


def test_is_link() -> None:
    assert graph.is_link(["4", 0])
    assert not graph.is_link(["4", "0"])
    assert not graph.is_link(["4", True])
    assert not graph.is_link("4")
    assert not graph.is_link([1, 2, 3])


def test_node_classes() -> None:
    assert graph.node_classes(GRAPH) == {
        "CheckpointLoaderSimple", "MyLoader", "LoadImage", "KSampler", "SaveImage", "PreviewImage"
    }


def test_required_models() -> None:
    assert graph.required_models(GRAPH) == {"sd15.safetensors", "w.gguf"}
    renamed = copy.deepcopy(GRAPH)
    renamed["2"]["inputs"]["weights"] = "w.q4"  # no known ending: only object_info finds it
    assert graph.required_models(renamed) == {"sd15.safetensors"}
    assert graph.required_models(renamed, INFO) == {"sd15.safetensors", "w.q4"}


def test_output_nodes() -> None:
    assert graph.output_nodes(GRAPH, INFO) == ["9", "10"]
    assert graph.output_nodes(GRAPH) == ["9", "10"]
    assert graph.prefix_nodes(GRAPH) == ["10"]


def test_can_run() -> None:
    ok, reason = graph.can_run(GRAPH, INFO)
    assert not ok and reason is not None
    assert "'in.png'" in reason and "'3'" in reason  # the image is not uploaded yet
    assert graph.can_run(GRAPH, INFO, ignore={("3", "image")}) == (True, None)


def test_can_run_names_missing_class_and_model() -> None:
    g = copy.deepcopy(GRAPH)
    g["5"] = {"class_type": "FancyNode", "inputs": {}}
    g["1"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    g["2"]["inputs"]["mode"] = "turbo"
    ok, reason = graph.can_run(g, INFO, ignore={("3", "image")})
    assert not ok and reason is not None
    assert "missing node class 'FancyNode'" in reason
    assert "missing model 'sdxl.safetensors'" in reason and "ckpt_name" in reason
    assert "missing value 'turbo'" in reason


def test_combo_choices_forms() -> None:
    assert graph.combo_choices([["a", "b"], {}]) == ["a", "b"]
    assert graph.combo_choices(["COMBO", {"options": ["c"]}]) == ["c"]
    assert graph.combo_choices(["INT", {"min": 0}]) is None
    assert graph.combo_choices(None) is None
