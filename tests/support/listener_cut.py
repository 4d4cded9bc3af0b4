"""Cut a PostgresEventLog's LISTEN connection as a network fault or a server restart would."""

from __future__ import annotations

import asyncpg

from comfy_fleet.log.postgres import PostgresEventLog
from tests.support.polling import eventually


async def cut_listener(log: PostgresEventLog, dsn: str) -> int:
    """Terminate the backend of `log`'s LISTEN connection and wait until the log has noticed.
    Returns that backend's pid (the reconnected listener's differs)."""
    listener = log._notify_conn  # noqa: SLF001 - the connection to cut
    assert listener is not None, "the log is not listening"
    pid = listener.get_server_pid()
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await eventually(lambda: log._notify_conn is None, what="the listener noticed")  # noqa: SLF001
    return pid
