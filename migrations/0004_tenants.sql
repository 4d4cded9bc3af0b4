-- Tenants (docs/api.md §7.1): every task belongs to one; client_task_id is unique per tenant.
--
-- Safe while the previous release runs: the column has a default, so its inserts (which do not
-- name it) record tenant `default`, which is what the new code reads for tasks from before
-- tenants existed; the unique pair is created before the single-column key is dropped, so
-- idempotency by client_task_id holds throughout (every old task has the same tenant).

ALTER TABLE tasks ADD COLUMN tenant text NOT NULL DEFAULT 'default';

ALTER TABLE tasks ADD CONSTRAINT tasks_tenant_client_task_id_key UNIQUE (tenant, client_task_id);
ALTER TABLE tasks DROP CONSTRAINT tasks_client_task_id_key;

-- GET /tasks with a tenant key (or an admin's ?tenant=): newest first within one tenant.
CREATE INDEX tasks_tenant_newest ON tasks (tenant, created_at DESC, task_id DESC);
-- Counting and scanning one tenant's waiting tasks (TENANT_MAX_WAITING, the router's scan).
CREATE INDEX tasks_tenant_queued ON tasks (tenant, created_at) WHERE status = 'queued';
-- A rebuild's stage (`task_rebuild_stage`, `LIKE tasks`, when a migration made one) keeps the
-- read model's columns.
ALTER TABLE IF EXISTS task_rebuild_stage ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';

-- The router's fair share is rebuilt from the latest dispatches, newest first.
CREATE INDEX task_events_dispatched ON task_events (position) WHERE type = 'task.dispatched';
