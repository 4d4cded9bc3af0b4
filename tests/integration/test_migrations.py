"""All migrations applied to an empty database give the expected schema; re-applying is a no-op."""

from __future__ import annotations

import asyncpg
import pytest

from comfy_fleet.cli import migrate

pytestmark = pytest.mark.postgres


async def test_schema_after_all_migrations(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await migrate.apply(conn) == []  # the template had them all
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        assert applied == [p.name for p in migrate.migration_files()]
        cols = {
            (r["table_name"], r["column_name"]): r["data_type"]
            for r in await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
        for col, typ in {
            "position": "bigint", "task_id": "uuid", "seq": "integer", "type": "text",
            "schema_version": "smallint", "payload": "jsonb",
            "recorded_at": "timestamp with time zone",
        }.items():
            assert cols[("task_events", col)] == typ
        assert cols[("tasks", "state")] == "jsonb"
        assert not any(table == "task_rebuild_stage" for table, _ in cols)  # dropped by 0008
        assert cols[("fleet_events", "payload")] == "jsonb"
        pk = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'task_events_pkey'"
        )
        assert pk == "PRIMARY KEY (task_id, seq)"
        triggers = {
            r["tgname"] for r in await conn.fetch(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'task_events'::regclass AND NOT tgisinternal"
            )
        }
        assert triggers == {"task_events_append_only", "task_events_no_truncate"}
        indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")}
        assert {
            "tasks_newest", "tasks_open", "tasks_webhook_pending", "tasks_tenant_client_task_id_key",
            "tasks_tenant_newest", "tasks_tenant_queued",
        } <= indexes
        assert "tasks_client_task_id_key" not in indexes  # unique per tenant now
        assert cols[("tasks", "tenant")] == "text"
        tenant = await conn.fetchrow(
            "SELECT is_nullable, column_default FROM information_schema.columns"
            " WHERE table_name = 'tasks' AND column_name = 'tenant'"
        )
        assert tenant["is_nullable"] == "NO" and tenant["column_default"] == "'default'::text"
        unique = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'tasks_tenant_client_task_id_key'"
        )
        assert unique == "UNIQUE (tenant, client_task_id)"
        event_indexes = {
            r["indexname"] for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'task_events'"
            )
        }
        assert "task_events_dispatched" in event_indexes
        # The fold snapshot: the read model's columns, keyed by task; both tables UNLOGGED.
        columns = {
            table: [(r["column_name"], r["data_type"], r["is_nullable"]) for r in await conn.fetch(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_name = $1 ORDER BY ordinal_position", table)]
            for table in ("tasks", "fold_snapshot_rows")
        }
        assert columns["fold_snapshot_rows"] == columns["tasks"]
        persistence = {
            r["relname"]: r["relpersistence"] for r in await conn.fetch(
                "SELECT relname, relpersistence::text FROM pg_class WHERE relname = ANY($1)",
                ["fold_snapshot", "fold_snapshot_rows", "tasks"])
        }
        assert persistence == {"fold_snapshot": "u", "fold_snapshot_rows": "u", "tasks": "p"}
        assert await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'fold_snapshot_rows'::regclass AND contype = 'p'"
        ) == "PRIMARY KEY (task_id)"
        assert cols[("fold_snapshot", "horizon")] == "bigint"
    finally:
        await conn.close()
