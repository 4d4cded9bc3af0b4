"""How stored objects are named: checked file names, output keys and content hashes.

Keys: ``output_key(task_id, index, filename)`` → ``tasks/<task_id>/<index:03d>-<safe name>``.
The index (the output's place in node order) keeps keys unique even when two outputs share a
file name, and the name is checked, then reduced to ``[A-Za-z0-9._-]``.
"""

from __future__ import annotations

import hashlib
import re

from comfy_fleet import errors

#: Longest file name accepted in a key, in UTF-8 bytes (the common filesystem limit).
MAX_FILENAME_BYTES = 255


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_filename(filename: str) -> str:
    """Return ``filename`` if it is a plain file name; raise errors.InputRejected otherwise.

    Refused: empty, ``.``/``..``, any path separator (so no absolute or nested path), control
    characters, more than MAX_FILENAME_BYTES bytes of UTF-8.
    """
    if not filename:
        raise errors.InputRejected("the file name is empty")
    if filename in (".", ".."):
        raise errors.InputRejected(
            f"the file name {filename!r} is not a file", {"filename": filename}
        )
    if "/" in filename or "\\" in filename:
        raise errors.InputRejected(
            f"the file name {filename!r} contains a path separator", {"filename": filename}
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in filename):
        raise errors.InputRejected(
            f"the file name {filename!r} contains a control character", {"filename": filename}
        )
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise errors.InputRejected(
            f"the file name is longer than {MAX_FILENAME_BYTES} bytes", {"filename": filename[:64]}
        )
    return filename


def output_key(task_id: str, index: int, filename: str) -> str:
    """``tasks/<task_id>/<index:03d>-<safe name>`` for output number ``index`` of a task."""
    if not _TASK_ID.match(task_id):
        raise ValueError(f"task id {task_id!r} is not usable in a key")
    if index < 0:
        raise ValueError(f"output index {index} is negative")
    safe = _UNSAFE_KEY_CHARS.sub("_", check_filename(filename))
    return f"tasks/{task_id}/{index:03d}-{safe}"
