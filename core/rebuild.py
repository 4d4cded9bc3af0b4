"""`python -m core.rebuild`: recompute the read model (`tasks`) from the event log.

Run with the service stopped (writers append to both; a rebuild while they run could miss a
concurrent append). `tests/contract/test_event_log.py` shows the rebuild equals the fold.
"""

from __future__ import annotations

import asyncio
import sys

from core.config import Settings
from core.postgres import PostgresEventLog


async def rebuild(dsn: str) -> int:
    log = await PostgresEventLog.connect(dsn)
    try:
        return await log.rebuild_read_model()
    finally:
        await log.close()


def main() -> None:
    dsn = sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().database_url
    if not dsn:
        sys.exit("core.rebuild: no DATABASE_URL (or RDB_*) configured and no DSN given")
    print(f"rebuilt {asyncio.run(rebuild(dsn))} task(s) from the log")


if __name__ == "__main__":
    main()
