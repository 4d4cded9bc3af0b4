"""Raw graphs checked against the real server's /object_info (v0.3.64, 478 classes), no I/O
beyond reading that recording."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfy_fleet import errors
from comfy_fleet.workflows import raw_graph

OBJECT_INFO: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "comfy_standin/data/object_info_full.json").read_text()
)
FLEET = [raw_graph.normalised(OBJECT_INFO)]

SOLID = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 255}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x/../s"}},
}
LOAD_BLUR = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
    "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 3,
                                                 "sigma": 1.5}},
    "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "b"}},
}


def refused(graph: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(errors.GraphInvalid) as caught:
        raw_graph.check(graph, kwargs.pop("fleet", FLEET), **kwargs)
    assert caught.value.status == 422 and caught.value.code == "graph_invalid"
    details: dict[str, Any] = caught.value.details
    return details


def with_input(graph: dict[str, Any], node: str, name: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(graph)
    changed[node]["inputs"][name] = value
    return changed


def test_a_valid_graph_passes_and_names_its_uploads() -> None:
    assert raw_graph.check(SOLID, FLEET) == {}
    assert raw_graph.check(LOAD_BLUR, FLEET, files={"cat.png"}) == {("10", "image"): "cat.png"}


def test_unknown_class_names_the_node() -> None:
    graph = {**SOLID, "3": {"class_type": "NopeNode", "inputs": {}}}
    details = refused(graph)
    assert details == {"node_id": "3", "class_type": "NopeNode", "problem": "class_unknown"}


def test_class_outside_the_allow_list_names_the_node() -> None:
    details = refused(LOAD_BLUR, files={"cat.png"},
                      allow={"LoadImage", "SaveImage", "EmptyImage"})
    assert details["node_id"] == "11" and details["problem"] == "class_refused"
    assert raw_graph.check(SOLID, FLEET, allow={"EmptyImage", "SaveImage"}) == {}


def test_a_link_to_a_missing_node_names_the_node_holding_it() -> None:
    details = refused(with_input(SOLID, "2", "images", ["7", 0]))
    assert details == {"node_id": "2", "class_type": "SaveImage", "problem": "broken_link",
                       "input": "images"}


def test_a_link_to_an_output_the_class_lacks_is_broken() -> None:
    details = refused(with_input(SOLID, "2", "images", ["1", 1]))
    assert details["node_id"] == "2" and details["problem"] == "broken_link"
    # a list that is no link at all (ComfyUI reads every list as one)
    assert refused(with_input(SOLID, "1", "width", [1, 0]))["problem"] == "broken_link"


def test_a_link_of_the_wrong_type() -> None:
    graph = {
        "1": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    details = refused(graph)
    assert details["problem"] == "type_mismatch" and details["node_id"] == "2"


def test_values_against_declared_types() -> None:
    assert refused(with_input(SOLID, "1", "width", 0))["input"] == "width"  # min 1
    assert refused(with_input(SOLID, "1", "width", 16385))["problem"] == "invalid_value"
    assert refused(with_input(SOLID, "1", "width", "64"))["problem"] == "invalid_value"
    assert refused(with_input(SOLID, "1", "width", 6.5))["problem"] == "invalid_value"
    assert refused(with_input(SOLID, "1", "width", True))["problem"] == "invalid_value"
    missing = copy.deepcopy(SOLID)
    del missing["1"]["inputs"]["color"]
    assert refused(missing) == {"node_id": "1", "class_type": "EmptyImage",
                                "problem": "invalid_value", "input": "color"}
    blur = with_input(LOAD_BLUR, "11", "sigma", 0.05)  # FLOAT min 0.1
    assert refused(blur, files={"cat.png"})["input"] == "sigma"


def test_combo_choices() -> None:
    graph = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageScale",
              "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 16,
                         "height": 16, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    assert raw_graph.check(graph, FLEET) == {}
    details = refused(with_input(graph, "2", "upscale_method", "magic"))
    assert details["node_id"] == "2" and details["input"] == "upscale_method"


def test_strings_are_held_to_the_string_limit() -> None:
    graph = with_input(SOLID, "2", "filename_prefix", "p" * 101)
    details = refused(graph, limits=raw_graph.Limits(max_string_length=100))
    assert details["input"] == "filename_prefix"
    nested = with_input(SOLID, "1", "extra", {"__value__": ["q" * 101]})
    assert refused(nested, limits=raw_graph.Limits(max_string_length=100))["input"] == "extra"


def test_files_must_match_the_image_inputs() -> None:
    assert refused(LOAD_BLUR)["problem"] == "file_unknown"  # cat.png not given
    assert refused(LOAD_BLUR, files={"cat.png", "dog.png"})["problem"] == "file_unused"
    assert refused(SOLID, files={"../x"})["problem"] == "bad_file_name"


def test_graph_shape_and_size() -> None:
    assert refused({})["problem"] == "not_api_format"
    assert refused({"nodes": [], "links": []})["problem"] == "not_api_format"
    assert refused({"1": {"inputs": {}}})["node_id"] == "1"
    assert refused(SOLID, limits=raw_graph.Limits(max_nodes=1))["problem"] == "too_large"
    many = {str(i): {"class_type": f"Custom{i:04d}" + "x" * 60, "inputs": {}} for i in range(80)}
    assert refused(many)["problem"] == "too_large"


def test_a_graph_runs_only_where_one_endpoint_has_every_class() -> None:
    only_empty = {"EmptyImage": OBJECT_INFO["EmptyImage"], "PreviewImage": OBJECT_INFO["PreviewImage"]}
    only_save = {"SaveImage": OBJECT_INFO["SaveImage"]}
    details = refused(SOLID, fleet=[only_empty, only_save])
    assert details["problem"] == "class_unknown" and details["node_id"] == "2"
    assert raw_graph.check(SOLID, [only_save, FLEET[0]]) == {}


def test_normalised_object_info_empties_upload_lists_and_shares_a_digest() -> None:
    one = copy.deepcopy(OBJECT_INFO)
    two = copy.deepcopy(OBJECT_INFO)
    one["LoadImage"]["input"]["required"]["image"][0] = ["a.png"]
    two["LoadImage"]["input"]["required"]["image"][0] = ["b.png", "c.png"]
    assert raw_graph.digest(raw_graph.normalised(one)) == raw_graph.digest(raw_graph.normalised(two))
    assert one["LoadImage"]["input"]["required"]["image"][0] == ["a.png"]  # untouched
    new_form = {"X": {"input": {"required": {"f": ["COMBO", {"options": ["v.mp4"],
                                                              "video_upload": True}]}}}}
    assert raw_graph.normalised(new_form)["X"]["input"]["required"]["f"][1]["options"] == []


def test_the_prompt_points_files_and_outputs_at_the_task() -> None:
    uploads = raw_graph.check(LOAD_BLUR, FLEET, files={"cat.png"})
    out = raw_graph.prompt(LOAD_BLUR, task_id="t1", uploads=uploads,
                           file_names={"cat.png": "fleet/t1-0.png"})
    assert out["10"]["inputs"]["image"] == "fleet/t1-0.png"
    assert out["12"]["inputs"]["filename_prefix"] == "fleet/t1/b"
    assert LOAD_BLUR["10"]["inputs"]["image"] == "cat.png"  # untouched
    solid = raw_graph.prompt(SOLID, task_id="t2", uploads={}, file_names={})
    assert solid["2"]["inputs"]["filename_prefix"] == "fleet/t2/s"


def test_class_labels_round_trip() -> None:
    labels = raw_graph.class_labels(LOAD_BLUR)
    assert labels == ["node:ImageBlur", "node:LoadImage", "node:SaveImage"]
    assert raw_graph.classes_of_labels([*labels, "gpu"]) == {"ImageBlur", "LoadImage", "SaveImage"}


def test_settings(tmp_path: Path) -> None:
    from comfy_fleet.config import Settings

    off = Settings.from_env({}, dotenv=tmp_path / "none")
    assert (off.raw_graphs, off.raw_graphs_tenants, off.raw_graph_allow_nodes) == (False, False, ())
    on = Settings.from_env(
        {"RAW_GRAPHS": "true", "RAW_GRAPH_ALLOW_NODES": "EmptyImage, SaveImage",
         "RAW_GRAPH_MAX_NODES": "20"}, dotenv=tmp_path / "none")
    assert on.raw_graphs and on.raw_graph_allow_nodes == ("EmptyImage", "SaveImage")
    assert on.raw_graph_max_nodes == 20
    with pytest.raises(errors.ConfigError, match="RAW_GRAPHS"):
        Settings.from_env({"RAW_GRAPHS": "maybe"}, dotenv=tmp_path / "none")
    with pytest.raises(errors.ConfigError, match="RAW_GRAPH_MAX_NODES"):
        Settings.from_env({"RAW_GRAPH_MAX_NODES": "0"}, dotenv=tmp_path / "none")
