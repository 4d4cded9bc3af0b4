"""Workflow versions: what names one (a digest of its two files) and what is kept of one.

A version is the first VERSION_HEX hex digits of sha256 over the API-format JSON and the TOML
manifest, each preceded by its length (so moving bytes from one file to the other changes it).
The same files give the same version on every machine, in every process, forever.

A version is stored once, when a task first uses it (`workflow_versions`, append-only like the
log): its two files' bytes, exactly as read, so the version can be recomputed from the row and
the workflow parsed again from it (`comfy_fleet.workflows.registry.workflow_from_stored`) long
after the files changed. Pure: no I/O here; the log's `WorkflowVersions` port stores them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

#: Hex digits of a version: 64 bits, enough that two edits of one workflow never collide.
VERSION_HEX = 16

_VERSION = re.compile(rf"^[0-9a-f]{{{VERSION_HEX}}}$")


def digest(json_bytes: bytes, toml_bytes: bytes) -> str:
    """The version of a workflow whose files hold these bytes."""
    h = hashlib.sha256()
    for part in (json_bytes, toml_bytes):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:VERSION_HEX]


def is_version(text: object) -> bool:
    """Whether `text` has the form of a version (it may still be one the service lacks)."""
    return isinstance(text, str) and _VERSION.match(text) is not None


@dataclass(frozen=True)
class StoredVersion:
    """One version of one workflow as kept: its files' bytes and when it was first used."""

    name: str
    version: str
    graph_json: bytes = field(repr=False)
    manifest_toml: bytes = field(repr=False)
    #: when it was first stored (None before it is)
    created_at: datetime | None = None

    def intact(self) -> bool:
        """Whether the bytes are those the version names (a row edited behind our back is not)."""
        return digest(self.graph_json, self.manifest_toml) == self.version
