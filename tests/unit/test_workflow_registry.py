"""WorkflowRegistry: loading a folder, broken pairs, reload add/change/remove."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from comfy_fleet import errors

from comfy_fleet.workflows import registry as workflow_registry

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                  "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}},
}
TOML = '[params.width]\nnode = "1"\nfield = "width"\ntype = "int"\ndefault = 8\n'


def write(folder: Path, name: str, toml: str = TOML, graph: object = GRAPH) -> None:
    (folder / f"{name}.json").write_text(json.dumps(graph))
    (folder / f"{name}.toml").write_text(toml)


def test_load_good_and_broken(tmp_path: Path) -> None:
    write(tmp_path, "good")
    write(tmp_path, "bad", toml='[params.w]\nnode = "1"\nfield = "width"\ntype = "sed"\n')
    write(tmp_path, "ui", graph={"nodes": [], "links": []})
    (tmp_path / "lonely.json").write_text(json.dumps(GRAPH))
    (tmp_path / "orphan.toml").write_text(TOML)
    (tmp_path / "README.md").write_text("not a workflow")
    registry, problems = workflow_registry.WorkflowRegistry.load(tmp_path)
    assert registry.names() == ["good"]
    messages = sorted(p.message for p in problems)
    assert len(messages) == 4
    assert any(m.startswith(f"{tmp_path / 'bad.toml'}: params.w.type: ") for m in messages)
    assert any(m.startswith(f"{tmp_path / 'ui.json'}: ") and "Export (API)" in m for m in messages)
    assert any(m.startswith(f"{tmp_path / 'lonely.json'}: no lonely.toml") for m in messages)
    assert any(m.startswith(f"{tmp_path / 'orphan.toml'}: no orphan.json") for m in messages)


def test_get_and_not_found(tmp_path: Path) -> None:
    write(tmp_path, "good")
    registry, _ = workflow_registry.WorkflowRegistry.load(tmp_path)
    wf = registry.get("good")
    assert wf.manifest.params["width"].default == 8
    assert wf.graph == GRAPH
    assert "good" in registry and len(registry) == 1
    with pytest.raises(errors.WorkflowNotFound, match="good"):
        registry.get("nope")
    assert pickle.loads(pickle.dumps(wf)) == wf  # crosses Ray actor boundaries


def test_bad_name_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "has space")
    registry, problems = workflow_registry.WorkflowRegistry.load(tmp_path)
    assert registry.names() == [] and "workflow name" in problems[0].message


def test_version_is_content_hash(tmp_path: Path) -> None:
    write(tmp_path, "a")
    write(tmp_path, "b")
    registry, _ = workflow_registry.WorkflowRegistry.load(tmp_path)
    assert registry.get("a").version == registry.get("b").version
    write(tmp_path, "b", toml=TOML + "# a comment\n")
    registry2, _ = workflow_registry.WorkflowRegistry.load(tmp_path)
    assert registry2.get("b").version != registry.get("b").version


def test_reload_added_changed_removed(tmp_path: Path) -> None:
    write(tmp_path, "keep")
    write(tmp_path, "change")
    write(tmp_path, "drop")
    registry, problems = workflow_registry.WorkflowRegistry.load(tmp_path)
    assert problems == []
    before = registry.get("keep")

    write(tmp_path, "new")
    write(tmp_path, "change", toml=TOML.replace("default = 8", "default = 16"))
    (tmp_path / "drop.json").unlink()
    (tmp_path / "drop.toml").unlink()
    result = registry.reload()
    assert (result.added, result.changed, result.removed) == (("new",), ("change",), ("drop",))
    assert result.errors == ()
    assert registry.names() == ["change", "keep", "new"]
    assert registry.get("change").manifest.params["width"].default == 16
    assert registry.get("keep") is before

    nothing = registry.reload()
    assert (nothing.added, nothing.changed, nothing.removed) == ((), (), ())
    assert json.dumps(nothing.to_json())


def test_reload_broken_edit_keeps_last_good_version(tmp_path: Path) -> None:
    write(tmp_path, "a")
    write(tmp_path, "b")
    registry, _ = workflow_registry.WorkflowRegistry.load(tmp_path)
    good = registry.get("a")
    write(tmp_path, "a", toml="bogus = 1\n" + TOML)
    write(tmp_path, "c", toml="[params")
    result = registry.reload()
    assert registry.get("a") is good  # still serving
    assert registry.names() == ["a", "b"]
    assert result.added == result.changed == result.removed == ()
    messages = sorted(e.message for e in result.errors)
    assert messages[0].startswith(f"{tmp_path / 'a.toml'}: bogus: unknown key")
    assert messages[1].startswith(f"{tmp_path / 'c.toml'}: not valid TOML")
    # fixing it picks the new version up
    write(tmp_path, "a", toml=TOML.replace("8", "9"))
    assert registry.reload().changed == ("a",)


def test_describe(tmp_path: Path) -> None:
    write(tmp_path, "a", toml='description = "d"\nlabels = ["gpu"]\n' + TOML)
    registry, _ = workflow_registry.WorkflowRegistry.load(tmp_path)
    d = registry.get("a").describe()
    assert d["name"] == "a" and d["description"] == "d" and d["labels"] == ["gpu"]
    assert d["params"]["properties"]["width"]["default"] == 8
    assert registry.get("a").required_labels == ("gpu",)


def test_missing_folder(tmp_path: Path) -> None:
    registry, problems = workflow_registry.WorkflowRegistry.load(tmp_path / "nope")
    assert len(registry) == 0 and "not a folder" in problems[0].message
