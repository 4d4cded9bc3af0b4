"""Applies `migrations/*.sql` in order, each once, recorded in `schema_migrations`.

Run at service start and by `python -m comfy_fleet.cli.migrate [DSN]`. Concurrent starters are serialised
by an advisory lock, so two replicas never apply the same file twice.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg

from comfy_fleet.config import REPO_ROOT

MIGRATIONS_DIR = REPO_ROOT / "migrations"
#: arbitrary, fixed: the advisory lock key of migrations.
_LOCK_KEY = 0x636F6D6679


def migration_files(folder: Path = MIGRATIONS_DIR) -> list[Path]:
    files = sorted(p for p in folder.glob("*.sql") if p.name[:4].isdigit())
    numbers = [int(p.name[:4]) for p in files]
    if numbers != list(range(1, len(files) + 1)):
        raise RuntimeError(f"migrations are not numbered 0001.. without gaps: {numbers}")
    return files


async def apply(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in migration_files(folder):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def apply_dsn(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply(conn)
    finally:
        await conn.close()


def main() -> None:
    from comfy_fleet.config import Settings

    dsn = sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().database_url
    if not dsn:
        sys.exit("comfy_fleet.cli.migrate: no DATABASE_URL (or RDB_*) configured and no DSN given")
    names = asyncio.run(apply_dsn(dsn))
    print(f"applied {len(names)} migration(s): {', '.join(names) or 'none needed'}")


if __name__ == "__main__":
    main()
