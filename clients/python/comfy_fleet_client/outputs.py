"""Downloading a task's outputs: where each file goes, and a sink that checks its sha256 and
size before the file takes its final name. No HTTP here (the clients fetch the bytes)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from comfy_fleet_client import errors, models

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file name that stays inside the target folder whatever the server reported."""
    base = os.path.basename(name.replace("\\", "/")) or "output"
    base = _UNSAFE.sub("_", base).lstrip(".")
    return base or "output"


def plan(task: models.Task, directory: str | os.PathLike[str]) -> list[tuple[models.Output, Path]]:
    """(output, path) for every output of `task`, names unique within the folder's plan: a
    name two outputs share gets its node id, then its index, in front."""
    folder = Path(directory)
    taken: set[str] = set()
    out = []
    for index, output in enumerate(task.outputs):
        name = safe_name(output.filename)
        if name in taken:
            name = safe_name(f"{output.node_id or 'node'}_{name}")
        if name in taken:
            name = safe_name(f"{index}_{name}")
        taken.add(name)
        out.append((output, folder / name))
    return out


class Sink:
    """Write one output to a temporary file beside its target; `commit()` checks the size
    and sha256 the service recorded, then renames it into place (never a partial file)."""

    def __init__(self, output: models.Output, path: Path) -> None:
        self.output = output
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self) -> Path:
        self._file.close()
        expected_sha, expected_size = self.output.sha256, self.output.size
        problem = None
        if expected_size is not None and self._size != expected_size:
            problem = f"{self._size} bytes, expected {expected_size}"
        elif expected_sha and self._hash.hexdigest() != expected_sha.lower():
            problem = f"sha256 {self._hash.hexdigest()}, expected {expected_sha}"
        if problem is not None:
            self._tmp.unlink(missing_ok=True)
            raise errors.IntegrityError(
                f"output {self.output.filename!r} does not match the task: {problem}",
                details={"filename": self.output.filename, "s3_key": self.output.s3_key},
            )
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def missing_url(task: models.Task) -> list[str]:
    """Outputs that have no download URL (kept on the service's disk, not in S3)."""
    return [o.filename for o in task.outputs if not o.url]


def no_url_error(task: models.Task, names: list[str]) -> errors.ComfyFleetError:
    return errors.ComfyFleetError(
        f"task {task.task_id}: {len(names)} output(s) have no download URL (not stored in S3): "
        + ", ".join(names),
        code="output_not_in_storage",
        details={"filenames": names},
    )
