"""The log's `WorkflowVersions` port (a part of `event_log.EventLog`), in memory and on
PostgreSQL (`workflow_versions`, migrations/0006): each a part of its whole log class."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, Protocol

from comfy_fleet.log import pg_errors
from comfy_fleet.log.sql import queries
from comfy_fleet.workflows import versions


class WorkflowVersions(Protocol):
    """The workflow versions tasks used, each stored once, when first used
    (comfy_fleet/workflows/versions.py); append-only like the log."""

    async def remember_version(self, stored: versions.StoredVersion) -> None:
        """Store the version unless it is stored already (then nothing changes)."""
        ...

    async def get_version(self, name: str, version: str) -> versions.StoredVersion | None:
        """The stored version (with `created_at`), None when it was never stored."""
        ...

    async def list_versions(self, name: str) -> list[versions.StoredVersion]:
        """Every stored version of the workflow `name`, oldest first."""
        ...


_NEVER = datetime.min.replace(tzinfo=UTC)


class InMemoryVersions:
    """`WorkflowVersions` in a dict; part of `InMemoryEventLog`."""

    @property
    def _versions(self) -> dict[tuple[str, str], versions.StoredVersion]:
        # made on first use: the whole log's __init__ need not know of this part
        held: dict[tuple[str, str], versions.StoredVersion]
        held = self.__dict__.setdefault("_held_versions", {})
        return held

    async def remember_version(self, stored: versions.StoredVersion) -> None:
        key = (stored.name, stored.version)
        if key not in self._versions:
            self._versions[key] = dataclasses.replace(stored, created_at=datetime.now(UTC))

    async def get_version(self, name: str, version: str) -> versions.StoredVersion | None:
        return self._versions.get((name, version))

    async def list_versions(self, name: str) -> list[versions.StoredVersion]:
        held = [v for (n, _), v in self._versions.items() if n == name]
        return sorted(held, key=lambda v: (v.created_at or _NEVER, v.version))


class PostgresVersions:
    """`WorkflowVersions` on the log's pool; part of `PostgresEventLog` (which sets `_pool`)."""

    _pool: Any

    async def remember_version(self, stored: versions.StoredVersion) -> None:
        with pg_errors.translated():
            await self._pool.execute(
                queries["insert_workflow_version"], stored.name, stored.version,
                stored.graph_json, stored.manifest_toml,
            )

    async def get_version(self, name: str, version: str) -> versions.StoredVersion | None:
        with pg_errors.translated():
            row = await self._pool.fetchrow(queries["select_workflow_version"], name, version)
        return _stored_version(row) if row is not None else None

    async def list_versions(self, name: str) -> list[versions.StoredVersion]:
        with pg_errors.translated():
            rows = await self._pool.fetch(queries["list_workflow_versions"], name)
        return [_stored_version(r) for r in rows]


def _stored_version(r: Any) -> versions.StoredVersion:
    return versions.StoredVersion(
        r["name"], r["version"], bytes(r["graph_json"]), bytes(r["manifest_toml"]),
        r["created_at"],
    )
