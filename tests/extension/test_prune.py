"""Emptied task folders are removed, and only under fleet/."""

from __future__ import annotations

from pathlib import Path

from comfyui_extension.comfy_fleet_cleanup.paths import prune_empty_parents


def test_prunes_empty_task_folders_up_to_fleet(tmp_path: Path) -> None:
    base = tmp_path / "output"
    deep = base / "fleet" / "task-1" / "sub"
    deep.mkdir(parents=True)
    keep = base / "fleet" / "task-2"
    keep.mkdir()
    (keep / "other.png").write_bytes(b"x")
    f = deep / "a.png"
    f.write_bytes(b"x")
    f.unlink()
    removed = prune_empty_parents(base, f)
    assert removed == [deep, deep.parent]
    assert (base / "fleet").is_dir() and keep.is_dir()


def test_leaves_folders_outside_fleet_and_non_empty_ones(tmp_path: Path) -> None:
    base = tmp_path / "output"
    mine = base / "mine"
    mine.mkdir(parents=True)
    f = mine / "a.png"
    f.write_bytes(b"x")
    f.unlink()
    assert prune_empty_parents(base, f) == [] and mine.is_dir()
    task = base / "fleet" / "t"
    task.mkdir(parents=True)
    (task / "b.png").write_bytes(b"x")
    assert prune_empty_parents(base, task / "gone.png") == [] and task.is_dir()
