"""The input, output and temp folders: ComfyUI's path rules for /view, /upload/image and
SaveImage's file naming, plus the comfy-fleet cleanup extension's delete rules.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dirs:
    """Absolute, resolved folder paths (the real server compares with ``commonpath``)."""

    input: str
    output: str
    temp: str

    @classmethod
    def create(cls, input_dir: Path, output_dir: Path, temp_dir: Path) -> Dirs:
        for d in (input_dir, output_dir, temp_dir):
            d.mkdir(parents=True, exist_ok=True)
        return cls(
            os.path.abspath(input_dir), os.path.abspath(output_dir), os.path.abspath(temp_dir)
        )

    def by_type(self, kind: str | None) -> str | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind or "")

    def wipe_temp(self) -> None:
        """The real server deletes its temp folder at start."""
        shutil.rmtree(self.temp, ignore_errors=True)
        os.makedirs(self.temp, exist_ok=True)


def annotated(name: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` -> ``("x.png", "output")``; no annotation -> ``(name, None)``."""
    for kind in ("output", "input", "temp"):
        tag = f"[{kind}]"
        if name.endswith(tag):
            return name[: -len(tag)].strip(), kind
    return name, None


def annotated_path(dirs: Dirs, name: str, default: str = "input") -> str:
    """Path of a LoadImage-style ``[sub/]name[ [type]]`` value."""
    bare, kind = annotated(name)
    base = dirs.by_type(kind or default) or dirs.input
    return os.path.join(base, bare)


# -- SaveImage naming ---------------------------------------------------------------------------
class SavePathError(Exception):
    """The prefix points outside the output folder."""


def _compute_vars(prefix: str, width: int, height: int) -> str:
    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    now = time.localtime()
    for key, val in (
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(key, val)
    return prefix


def save_path(prefix: str, base: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """``(folder, filename, counter, subfolder)`` as ``folder_paths.get_save_image_path``.

    The counter continues from the highest ``<filename>_<NNNNN>_`` already in the folder.
    """
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    norm = os.path.normpath(prefix)
    subfolder = os.path.dirname(norm)
    filename = os.path.basename(norm)
    folder = os.path.join(base, subfolder)
    if os.path.commonpath((base, os.path.abspath(folder))) != base:
        raise SavePathError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}"
            f"\n         output_dir: {base}"
            f"\n         commonpath: {os.path.commonpath((base, os.path.abspath(folder)))}"
        )
    key = (folder, os.path.normcase(filename))
    try:
        mtime = os.stat(folder).st_mtime_ns
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return folder, filename, 1, subfolder
    known = _COUNTERS.get(key)
    if known is not None and known[0] == mtime:
        # Nothing changed in the folder since our last save with this prefix: skip the scan.
        return folder, filename, known[1], subfolder
    prefix_len = len(filename)
    want = key[1]
    best = 0
    for name in os.listdir(folder):
        head = name[: prefix_len + 1]
        if head[-1:] != "_" or os.path.normcase(head[:-1]) != want:
            continue
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        best = max(best, digits)
    return folder, filename, best + 1, subfolder


#: (folder, prefix) -> (folder mtime after our last save, next counter); a cache of the scan
_COUNTERS: dict[tuple[str, str], tuple[int, int]] = {}


def saved(folder: str, filename: str, next_counter: int) -> None:
    """Record the counter after a save, so the next save in an unchanged folder skips listdir."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return
    _COUNTERS[(folder, os.path.normcase(filename))] = (mtime, next_counter)


# -- uploads -------------------------------------------------------------------------------------
class UploadRejected(Exception):
    """Answer 400 with an empty body."""


def store_upload(
    dirs: Dirs, data: bytes, filename: str, subfolder: str, kind: str | None, overwrite: str | None
) -> tuple[str, str, bool]:
    """Save an upload by the rules of ``/upload/image``: ``(stored_name, type, written)``.

    Same name and same bytes: nothing written, name returned. Same name, other bytes:
    ``name (1).ext``, ``name (2).ext``… unless ``overwrite`` is ``"true"``/``"1"``.
    """
    kind = kind or "input"
    base = dirs.by_type(kind)
    if base is None:
        raise ValueError(f"unknown upload type {kind!r}")  # the real server answers 500 too
    if not filename:
        raise UploadRejected()
    folder = os.path.join(base, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((base, path)) != base:
        raise UploadRejected()
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(filename)
    if overwrite not in ("true", "1"):
        i = 1
        digest = None
        while os.path.exists(path):
            if digest is None:
                digest = hashlib.sha256(data).hexdigest()
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() == digest:
                    return filename, kind, False
            filename = f"{stem} ({i}){ext}"
            path = os.path.join(folder, filename)
            i += 1
    with open(path, "wb") as f:
        f.write(data)
    return filename, kind, True


# -- /view ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewTarget:
    status: int  # 200 when ``path`` is a file to serve
    path: str = ""
    filename: str = ""


def resolve_view(dirs: Dirs, query: dict[str, str]) -> ViewTarget:
    """The file ``GET /view`` serves, or the status it answers (400/403/404)."""
    if "filename" not in query:
        return ViewTarget(404)
    filename, kind = annotated(query["filename"])
    if not filename:
        return ViewTarget(400)
    if filename[0] == "/" or ".." in filename:
        return ViewTarget(400)
    base = dirs.by_type(kind) if kind else dirs.by_type(query.get("type", "output"))
    if base is None:
        return ViewTarget(400)
    if "subfolder" in query:
        full = os.path.join(base, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), base)) != base:
            return ViewTarget(403)
        base = full
    filename = os.path.basename(filename)
    path = os.path.join(base, filename)
    if os.path.isfile(path):
        return ViewTarget(200, path, filename)
    return ViewTarget(404)


# -- the comfy-fleet cleanup extension -----------------------------------------------------------
class CleanupError(Exception):
    """``args = (status, message)``: 400 for a refused path, 404 for a missing file."""

    @property
    def status(self) -> int:
        return int(self.args[0])


def cleanup_target(dirs: Dirs, kind: object, filename: object, subfolder: object) -> Path:
    """The file ``POST /comfy-fleet/cleanup/delete`` may delete, or CleanupError.

    Refused (400): a type other than input/output/temp, a non-string or empty name, an absolute
    path, a ``..`` component, control characters, anything that resolves (symlinks followed)
    outside the folder, and folders. Missing: 404.
    """
    if kind not in ("input", "output", "temp"):
        raise CleanupError(400, "type must be input, output or temp")
    subfolder = "" if subfolder is None else subfolder
    if not isinstance(filename, str) or not filename or not isinstance(subfolder, str):
        raise CleanupError(400, "filename must be a non-empty string")
    for part in (filename, subfolder):
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
            raise CleanupError(400, "control characters are not allowed")
        drive = len(part) > 1 and part[1] == ":"
        if part.startswith(("/", "\\")) or os.path.isabs(part) or drive:
            raise CleanupError(400, "absolute paths are not allowed")
        if ".." in part.replace("\\", "/").split("/"):
            raise CleanupError(400, "'..' is not allowed")
    base = Path(dirs.by_type(kind) or "").resolve()
    candidate = base / subfolder / filename
    resolved = candidate.resolve()
    if resolved == base or base not in resolved.parents:
        raise CleanupError(400, "path leaves the folder")
    if not candidate.exists() and not candidate.is_symlink():
        raise CleanupError(404, "no such file")
    if resolved.is_dir():
        raise CleanupError(400, "a folder cannot be deleted")
    if not resolved.exists():
        raise CleanupError(404, "no such file")
    return candidate
