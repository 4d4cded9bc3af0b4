"""PostgreSQL's errors as the project's: the one place asyncpg's exceptions are translated.

A unique violation on the (task_id, seq) key is a `ConcurrencyConflict`, on client_task_id a
`DuplicateClientTaskId`, on a batch's client_batch_id a `DuplicateClientBatchId`; a lost or
refused connection is `DatabaseUnavailable` (retryable, the API's 503); a value PostgreSQL
refuses is `InvalidRequest`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from comfy_fleet import errors

#: The unique keys on client_task_id: per tenant (migrations/0004_tenants.sql), and the
#: single-column one of the schema before it.
CLIENT_TASK_ID_KEYS = frozenset({"tasks_tenant_client_task_id_key", "tasks_client_task_id_key"})

UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


@contextlib.contextmanager
def translated(task_id: str | None = None, expected_seq: int | None = None) -> Iterator[None]:
    """Run the block, raising asyncpg's errors as the project's (`raise ... from exc`)."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name in CLIENT_TASK_ID_KEYS:
            raise errors.DuplicateClientTaskId("client_task_id is already recorded") from exc
        if exc.constraint_name == "batches_tenant_client_batch_id_key":
            raise errors.DuplicateClientBatchId("client_batch_id is already recorded") from exc
        raise errors.ConcurrencyConflict(
            f"task {task_id}: seq {(expected_seq or 0) + 1} is taken"
        ) from exc
    except UNAVAILABLE as exc:
        raise errors.DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except asyncpg.PostgresError as exc:
        if isinstance(exc, asyncpg.exceptions.DataError):
            raise errors.InvalidRequest(f"invalid value: {exc.__class__.__name__}") from exc
        raise
