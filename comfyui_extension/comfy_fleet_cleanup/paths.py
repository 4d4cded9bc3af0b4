"""The one path rule of the cleanup route: a name must stay inside its folder.

Pure (no ComfyUI imports) so the stand-in serves the same rule. ``resolve_inside`` reads the
file system only to follow symlinks and to refuse folders; ``unlink_inside`` and
``prune_empty_parents`` change it without following a symlink on the way, so a folder swapped for
a symlink between the check and the change cannot lead outside (the check alone would be a race).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")
#: Walking by directory descriptors needs ``dir_fd`` and ``O_NOFOLLOW`` (POSIX); elsewhere the
#: delete goes by path after the check, as it always did there.
_BY_FD = (
    os.unlink in os.supports_dir_fd
    and os.rmdir in os.supports_dir_fd
    and hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class Escaped(ValueError):
    """A folder on the path is not a real folder inside the base (a symlink, or not a folder)."""

    def __init__(self) -> None:
        super().__init__("path resolves outside the folder")


def _check_part(label: str, value: str) -> list[str]:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{label} contains a control character")
    if value.startswith(("/", "\\")) or _DRIVE.match(value):
        raise ValueError(f"{label} is an absolute path")
    parts = [p for p in re.split(r"[/\\]", value) if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{label} contains '..'")
    return parts


def check_parts(label: str, value: str) -> list[str]:
    """The parts of a relative "/"- or "\\"-separated name (no "" or "."); ValueError naming
    ``label`` for control characters, an absolute path or ``..``."""
    return _check_part(label, value)


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


def _open_folders(base: Path, names: list[str], *, create: bool = False) -> list[int]:
    """Descriptors of ``base`` (symlinks in ``base`` itself followed: it is the operator's) and of
    each folder ``names`` walks down, each opened relative to the last without following a
    symlink (and made first when missing, with ``create``). The caller closes them. Raises
    ``Escaped`` at a symlink or a non-folder."""
    fds = [os.open(base, _DIR_FLAGS)]
    try:
        for name in names:
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fds[-1])
                except FileExistsError:
                    pass  # a folder (opened below) or not (refused below)
            try:
                fds.append(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fds[-1]))
            except FileNotFoundError:
                raise
            except OSError as exc:  # ELOOP (a symlink) or ENOTDIR
                raise Escaped() from exc
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def unlink_inside(base: Path, target: Path) -> None:
    """Delete ``target`` (a path ``resolve_inside`` returned for ``base``) without following a
    symlink in any folder on its way; a final symlink is removed, not its target.

    Raises ``Escaped`` when a folder on the way is a symlink or not a folder,
    ``FileNotFoundError`` and ``IsADirectoryError`` as ``os.unlink`` would.
    """
    if not _BY_FD:
        os.unlink(target)
        return
    *folders, name = Path(target).relative_to(base).parts
    fds = _open_folders(base, folders)
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=fds[-1], follow_symlinks=False).st_mode):
            raise IsADirectoryError(str(target))
        os.unlink(name, dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


#: Only folders under this first component are pruned: comfy-fleet writes each task's files
#: under `fleet/<task_id>/` (inputs `fleet/…`), and an operator's own folders are left alone.
PRUNE_ROOT = "fleet"


def prune_empty_parents(base: Path, deleted: Path) -> list[Path]:
    """After deleting `deleted`, remove its now-empty parent folders under `base/fleet/`
    (never `base` or `base/fleet` itself). Returns the folders removed, deepest first.

    Without this, a host serving millions of tasks keeps one empty folder per task."""
    base = Path(os.path.abspath(base))
    root = base / PRUNE_ROOT
    folder = Path(os.path.abspath(deleted)).parent
    if folder == root or root not in folder.parents:
        return []
    names = list(folder.relative_to(base).parts)
    if not _BY_FD:
        return _prune_by_path(root, folder)
    try:
        fds = _open_folders(base, names[:-1])
    except (OSError, ValueError):
        return []  # a folder on the way is gone, or not ours to walk: nothing to prune
    removed: list[Path] = []
    try:
        # fds[i] is the folder holding names[i]; stop before `fleet` (names[0]) itself.
        for depth in range(len(names) - 1, 0, -1):
            try:
                os.rmdir(names[depth], dir_fd=fds[depth])  # only when empty; not a symlink
            except OSError:
                break
            removed.append(folder)
            folder = folder.parent
    finally:
        for fd in fds:
            os.close(fd)
    return removed


def _prune_by_path(root: Path, folder: Path) -> list[Path]:
    removed: list[Path] = []
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only succeeds when empty; never follows a symlink
        except OSError:
            break
        removed.append(folder)
        folder = folder.parent
    return removed


class FolderFd:
    """A descriptor of ``base/<names…>``, reached without following a symlink below ``base``
    (missing folders are made on the way when ``create``); use as a context manager, which
    closes every descriptor it opened. Needs POSIX ``dir_fd`` support (``BY_FD``).

    Raises ``Escaped`` when a folder on the way is a symlink or not a folder."""

    def __init__(self, base: Path, names: list[str], *, create: bool = False) -> None:
        self._base = base
        self._names = names
        self._create = create
        self._fds: list[int] = []

    def __enter__(self) -> int:
        self._fds = _open_folders(self._base, self._names, create=self._create)
        return self._fds[-1]

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


#: Whether ``FolderFd`` can be used here (POSIX).
BY_FD = _BY_FD and os.link in os.supports_dir_fd and os.mkdir in os.supports_dir_fd
