"""The one path rule of the cleanup route: a name must stay inside its folder.

Pure (no ComfyUI imports) so the stand-in serves the same rule. It reads the file system only
to follow symlinks and to refuse folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_part(label: str, value: str) -> list[str]:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{label} contains a control character")
    if value.startswith(("/", "\\")) or _DRIVE.match(value):
        raise ValueError(f"{label} is an absolute path")
    parts = [p for p in re.split(r"[/\\]", value) if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{label} contains '..'")
    return parts


def resolve_inside(base: Path, subfolder: str, filename: str) -> Path:
    """The path of ``subfolder/filename`` in ``base``; ValueError (with the reason) when refused.

    Refused: a non-string or empty filename, control characters, absolute paths, ``..``, anything
    that resolves outside ``base`` once symlinks are followed (also a symlinked parent), and a
    name that is a folder (or ``base`` itself). The returned path is not resolved: deleting it
    removes the named entry (a symlink inside ``base`` is removed, not its target).
    """
    if not isinstance(filename, str) or not isinstance(subfolder, str):
        raise ValueError("filename and subfolder must be strings")
    if filename == "":
        raise ValueError("filename is empty")
    parts = _check_part("subfolder", subfolder) + _check_part("filename", filename)
    if not parts:
        raise ValueError("filename names the folder itself")
    root = Path(os.path.realpath(base))
    candidate = Path(base).joinpath(*parts)
    resolved = Path(os.path.realpath(candidate))
    if resolved == root or root not in resolved.parents:
        raise ValueError("path resolves outside the folder")
    if resolved.is_dir():
        raise ValueError("path is a folder")
    return candidate


#: Only folders under this first component are pruned: comfy-fleet writes each task's files
#: under `fleet/<task_id>/` (inputs `fleet/…`), and an operator's own folders are left alone.
PRUNE_ROOT = "fleet"


def prune_empty_parents(base: Path, deleted: Path) -> list[Path]:
    """After deleting `deleted`, remove its now-empty parent folders under `base/fleet/`
    (never `base` or `base/fleet` itself). Returns the folders removed, deepest first.

    Without this, a host serving millions of tasks keeps one empty folder per task."""
    base = Path(os.path.abspath(base))
    root = base / PRUNE_ROOT
    removed: list[Path] = []
    folder = Path(os.path.abspath(deleted)).parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only succeeds when empty; never follows a symlink
        except OSError:
            break
        removed.append(folder)
        folder = folder.parent
    return removed
