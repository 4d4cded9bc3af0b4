"""Manifest parsing: every refusal names the file and the key."""

from __future__ import annotations

import json
import pickle
import tomllib
from pathlib import Path

import pytest

from comfy_fleet import errors

from comfy_fleet.workflows import manifest

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                  "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}
SOURCE = "workflows/x.toml"


def parse(text: str, graph: dict | None = None) -> manifest.Manifest:
    return manifest.parse_manifest(
        tomllib.loads(text), graph or GRAPH, name="x", source=SOURCE
    )


def refused(text: str, key: str, *words: str) -> str:
    with pytest.raises(errors.ManifestInvalid) as info:
        parse(text)
    msg = info.value.message
    assert msg.startswith(f"{SOURCE}: {key}: "), msg
    for w in words:
        assert w in msg, msg
    return msg


def test_full_manifest_parses() -> None:
    m = parse(
        """
        description = "solid"
        labels = ["cpu", "cpu", "small"]
        output_prefix = "out/fleet"
        [params.width]
        node = "1"
        field = "width"
        type = "int"
        default = 64
        min = 1
        max = 4096
        description = "w"
        [params.mode]
        node = "2"
        field = "filename_prefix"
        type = "choice"
        choices = ["a", "b"]
        default = "b"
        """
    )
    assert m.name == "x" and m.description == "solid"
    assert m.required_labels == ("cpu", "small")
    assert m.output_prefix == "out/fleet"
    w = m.params["width"]
    assert (w.node, w.field, w.type, w.default, w.min, w.max) == ("1", "width", "int", 64, 1, 4096)
    assert m.params["mode"].choices == ("a", "b")
    assert pickle.loads(pickle.dumps(m)) == m


def test_integer_node_id_is_accepted_as_string() -> None:
    m = parse('[params.w]\nnode = 1\nfield = "width"\ntype = "int"')
    assert m.params["w"].node == "1"


def test_unknown_type_names_choices() -> None:
    refused(
        '[params.seed]\nnode = "1"\nfield = "width"\ntype = "sed"',
        "params.seed.type",
        "unknown type 'sed'",
        "string | int".replace(" | ", ", "),
    )


def test_node_not_in_graph() -> None:
    refused('[params.a]\nnode = "9"\nfield = "width"\ntype = "int"', "params.a.node", "'9'")


def test_field_not_in_node() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "wdth"\ntype = "int"',
        "params.a.field",
        "'wdth'",
        "EmptyImage",
        "width",
    )


def test_field_that_is_a_link_is_refused() -> None:
    refused(
        '[params.a]\nnode = "2"\nfield = "images"\ntype = "image"',
        "params.a.field",
        "link",
        "connection",
    )


def test_default_of_wrong_type() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\ndefault = "big"',
        "params.a.default",
        "integer",
    )
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\ndefault = true',
        "params.a.default",
        "integer",
    )


def test_default_out_of_range() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\ndefault = 0\nmin = 1',
        "params.a.default",
        "minimum",
    )


def test_min_greater_than_max() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\nmin = 5\nmax = 1',
        "params.a.min",
        "greater than max",
    )


def test_choice_without_choices() -> None:
    refused('[params.a]\nnode = "1"\nfield = "width"\ntype = "choice"', "params.a.choices")


def test_default_not_in_choices() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "choice"\nchoices = [1, 2]\ndefault = 3',
        "params.a.default",
        "not one of",
    )


def test_unknown_keys_are_named() -> None:
    refused('colour = 1\nlabel = "x"', "colour, label", "unknown keys")
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\nmaximum = 3',
        "params.a.maximum",
        "unknown key",
    )


def test_key_not_allowed_for_type() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\nmax_length = 3',
        "params.a.max_length",
        "not allowed for type 'int'",
    )


def test_missing_required_keys() -> None:
    refused('[params.a]\nnode = "1"\ntype = "int"', "params.a.field", "missing")


def test_required_with_default() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\nrequired = true\ndefault = 3',
        "params.a.default",
        "required",
    )


def test_image_takes_no_default() -> None:
    refused(
        '[params.a]\nnode = "2"\nfield = "filename_prefix"\ntype = "image"\ndefault = "x.png"',
        "params.a.default",
    )


def test_two_params_on_one_input() -> None:
    refused(
        '[params.a]\nnode = "1"\nfield = "width"\ntype = "int"\n'
        '[params.b]\nnode = "1"\nfield = "width"\ntype = "int"',
        "params.b",
        "params.a",
    )


def test_bad_labels_and_prefix_and_name() -> None:
    refused("labels = [1]", "labels")
    refused('output_prefix = "../up"', "output_prefix")
    refused('[params."1bad"]\nnode = "1"\nfield = "width"\ntype = "int"', "params.1bad")


def test_seed_default_and_bounds() -> None:
    m = parse('[params.s]\nnode = "1"\nfield = "color"\ntype = "seed"\ndefault = "random"')
    assert m.params["s"].default == "random"
    refused('[params.s]\nnode = "1"\nfield = "color"\ntype = "seed"\nmin = -1', "params.s.min")


def test_ui_format_graph_is_refused_with_a_hint() -> None:
    with pytest.raises(errors.ManifestInvalid) as info:
        manifest.parse_graph({"nodes": [], "links": [], "version": 0.4}, source="w/x.json")
    assert info.value.message.startswith("w/x.json: ")
    assert "Export (API)" in info.value.message


@pytest.mark.parametrize(
    ("graph", "key"),
    [
        ({}, ""),
        ({"1": []}, "1"),
        ({"1": {"inputs": {}}}, "1.class_type"),
        ({"1": {"class_type": "X"}}, "1.inputs"),
        ({"1": {"class_type": "X", "inputs": {"a": ["9", 0]}}}, "1.inputs.a"),
    ],
)
def test_malformed_graphs(graph: dict, key: str) -> None:
    with pytest.raises(errors.ManifestInvalid) as info:
        manifest.parse_graph(graph, source="w/x.json")
    assert info.value.message.startswith(f"w/x.json: {key}")


def test_load_from_files_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps(GRAPH))
    (tmp_path / "x.toml").write_text('[params.a]\nnode = "1"\nfield = "width"\ntype = "flt"')
    graph = manifest.load_graph(tmp_path / "x.json")
    with pytest.raises(errors.ManifestInvalid) as info:
        manifest.load_manifest(tmp_path / "x.toml", graph, name="x")
    assert info.value.message.startswith(f"{tmp_path / 'x.toml'}: params.a.type: ")
    (tmp_path / "x.toml").write_text("description = ")
    with pytest.raises(errors.ManifestInvalid, match="not valid TOML"):
        manifest.load_manifest(tmp_path / "x.toml", graph, name="x")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(errors.ManifestInvalid, match="not valid JSON"):
        manifest.load_graph(tmp_path / "x.json")
