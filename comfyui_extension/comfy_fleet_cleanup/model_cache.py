"""The fetched models a host keeps, and which of them go to make room: pure, no I/O.

Only models the extension fetched are entries here (an operator's own files never are), so only
they are ever evicted. ``choose_evictions`` is the whole budget policy: least recently used
first, never one in use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

INDEX_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Entry:
    """One fetched model: ``filename`` ("/"-separated) inside ``base``, the first of ComfyUI's
    paths for ``folder`` when it was fetched."""

    sha256: str
    folder: str
    filename: str
    base: str
    size: int
    last_used: float
    fetched_at: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.folder, self.filename)

    def public(self) -> dict[str, Any]:
        """As ``GET /comfy-fleet/models`` lists it."""
        return {"sha256": self.sha256, "folder": self.folder, "filename": self.filename,
                "size": self.size, "last_used": self.last_used, "fetched_at": self.fetched_at}


class NoRoom(Exception):
    """The budget cannot take ``incoming`` bytes even after evicting every model not in use."""

    def __init__(self, incoming: int, budget: int, pinned: int) -> None:
        super().__init__(incoming, budget, pinned)

    @property
    def details(self) -> dict[str, int]:
        incoming, budget, pinned = self.args
        return {"size": incoming, "cache_bytes": budget, "in_use_bytes": pinned}


def choose_evictions(
    entries: Iterable[Entry], budget: int, incoming: int, in_use: set[tuple[str, str]],
    reserved: int = 0,
) -> list[Entry]:
    """The entries to delete, oldest ``last_used`` first, so that the kept entries plus
    ``reserved`` (bytes other pulls are writing) plus ``incoming`` fit in ``budget``.

    Entries whose key is in ``in_use`` are never chosen. Raises NoRoom when even deleting all
    the others leaves too little room (nothing is to be deleted then).
    """
    entries = list(entries)
    total = sum(e.size for e in entries) + reserved + incoming
    if total <= budget:
        return []
    pinned = sum(e.size for e in entries if e.key in in_use)
    if pinned + reserved + incoming > budget:
        raise NoRoom(incoming, budget, pinned + reserved)
    chosen = []
    for entry in sorted((e for e in entries if e.key not in in_use),
                        key=lambda e: (e.last_used, e.fetched_at, e.key)):
        if total <= budget:
            break
        chosen.append(entry)
        total -= entry.size
    return chosen


def names_in_prompts(prompts: Iterable[Any]) -> set[str]:
    """Every string input value of every node of ``prompts`` (API-format graphs): the names a
    queued or running prompt may load. A prompt that is not a graph names nothing."""
    names: set[str] = set()
    for prompt in prompts:
        if not isinstance(prompt, Mapping):
            continue
        for node in prompt.values():
            inputs = node.get("inputs") if isinstance(node, Mapping) else None
            if isinstance(inputs, Mapping):
                names.update(v for v in inputs.values() if isinstance(v, str))
    return names


def in_use(entries: Iterable[Entry], names: set[str], shas: Iterable[str]) -> set[tuple[str, str]]:
    """Keys of the entries a prompt names (by file name, "/" or "\\" separated, as ComfyUI's
    loaders list them on Linux or Windows) or whose sha256 is in ``shas``."""
    shas = set(shas)
    return {
        e.key for e in entries
        if e.sha256 in shas or e.filename in names or e.filename.replace("/", "\\") in names
    }


def to_json(entries: Iterable[Entry]) -> dict[str, Any]:
    """The index file's content."""
    return {"version": INDEX_VERSION, "models": [dataclasses.asdict(e) for e in entries]}


def from_json(data: Any) -> list[Entry]:
    """Entries of an index file's content; entries that do not parse are left out (forgotten,
    so never evicted: a file nobody can vouch for is treated as the operator's)."""
    out: list[Entry] = []
    models = data.get("models") if isinstance(data, dict) else None
    for raw in models if isinstance(models, list) else []:
        try:
            entry = Entry(**raw)
        except TypeError:
            continue
        if (
            isinstance(entry.sha256, str) and isinstance(entry.folder, str)
            and isinstance(entry.filename, str) and isinstance(entry.base, str)
            and isinstance(entry.size, int) and entry.size >= 0
            and isinstance(entry.last_used, (int, float))
            and isinstance(entry.fetched_at, (int, float))
        ):
            out.append(entry)
    return out


def touched(entry: Entry, now: float) -> Entry:
    return dataclasses.replace(entry, last_used=max(entry.last_used, now))
