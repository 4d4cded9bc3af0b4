"""Named SQL blocks from `queries.sql`, loaded once: `sql.queries["append_events"]`."""

from __future__ import annotations

import re
from pathlib import Path

_BLOCK = re.compile(r"^-- ([a-z_0-9]+) --$", re.MULTILINE)


def _load() -> dict[str, str]:
    text = (Path(__file__).parent / "queries.sql").read_text()
    parts = _BLOCK.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


queries: dict[str, str] = _load()
