-- Every query of comfy-fleet, as named blocks. asyncpg has positional parameters only: each
-- block's comment gives their order.

-- append_events --
-- Stores a batch of one task's events and upserts its read-model row, in one statement (one
-- implicit transaction, one round trip). $1 task_id, $2 seqs, $3 types, $4 versions,
-- $5 payloads, $6 recorded_at, $7 client_task_id, $8 workflow, $9 status, $10 priority,
-- $11 webhook, $12 last_seq, $13 created_at, $14 updated_at, $15 state, $16 expected_seq,
-- $17 queued notification payload (JSON text: the task was submitted or requeued) or NULL,
-- $18 ended notification payload (JSON text: the task reached an end or its webhook became
-- pending) or NULL, $19 tenant
WITH ins AS (
    INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)
    SELECT $1, u.seq, u.type, u.version, u.payload, u.at
    FROM unnest($2::int[], $3::text[], $4::smallint[], $5::jsonb[], $6::timestamptz[])
        AS u(seq, type, version, payload, at)
    RETURNING position
), up AS (
    INSERT INTO tasks AS t (task_id, client_task_id, workflow, status, priority, webhook,
                            last_seq, created_at, updated_at, state, tenant)
    VALUES ($1, $7, $8, $9, $10, $11, $12, $13, $14, $15, $19)
    ON CONFLICT (task_id) DO UPDATE
        SET status = EXCLUDED.status, webhook = EXCLUDED.webhook, last_seq = EXCLUDED.last_seq,
            updated_at = EXCLUDED.updated_at, state = EXCLUDED.state
        WHERE t.last_seq = $16
    RETURNING 1
), notified AS (
    SELECT pg_notify('task_events_v1', $1::text || ':' || $12::text)
), queued AS (
    -- The router follows tasks that wait for dispatch through this channel: new ones (no call
    -- from the ingress) and requeued ones (no call from the endpoint that let go of them).
    SELECT pg_notify('tasks_queued_v1', $17::text) WHERE $17::text IS NOT NULL
), ended AS (
    -- The router frees the endpoint's slot and the webhook dispatcher delivers, on commit.
    SELECT pg_notify('tasks_ended_v1', $18::text) WHERE $18::text IS NOT NULL
)
SELECT (SELECT array_agg(position ORDER BY position) FROM ins) AS positions,
       (SELECT count(*) FROM up) AS upserted,
       (SELECT count(*) FROM notified) + (SELECT count(*) FROM queued)
           + (SELECT count(*) FROM ended) AS notified;

-- select_task_events --
-- $1 task_id, $2 after_seq
SELECT seq, type, schema_version, payload, recorded_at, position
FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq;

-- select_task_state --
-- $1 task_id
SELECT state FROM tasks WHERE task_id = $1;

-- select_client_task --
-- Idempotency is per tenant. $1 tenant, $2 client_task_id
SELECT state FROM tasks WHERE tenant = $1 AND client_task_id = $2;

-- list_tasks --
-- Newest first, keyset paging. $1 status|null, $2 workflow|null, $3 client_task_id|null,
-- $4 cursor created_at|null, $5 cursor task_id|null, $6 limit, $7 tenant|null
SELECT state, created_at, task_id FROM tasks
WHERE ($7::text IS NULL OR tenant = $7)
  AND ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR workflow = $2)
  AND ($3::text IS NULL OR client_task_id = $3)
  AND ($4::timestamptz IS NULL OR (created_at, task_id) < ($4, $5::uuid))
ORDER BY created_at DESC, task_id DESC
LIMIT $6;

-- open_tasks --
SELECT state FROM tasks WHERE status NOT IN ('succeeded', 'failed', 'cancelled')
ORDER BY created_at;

-- queued_tasks --
-- What the router needs of every task waiting for dispatch (no state JSON: it is a scan).
SELECT task_id, priority, created_at, workflow, state->'required_labels' AS labels, tenant
FROM tasks WHERE status = 'queued' ORDER BY created_at;

-- dispatch_tenants --
-- The tenants of the latest $1 dispatches (task.dispatched facts), oldest first: the router
-- replays them into its fair share at start, so the share survives restarts.
SELECT t.tenant FROM (
    SELECT task_id, position FROM task_events WHERE type = 'task.dispatched'
    ORDER BY position DESC LIMIT $1
) AS d JOIN tasks AS t USING (task_id)
ORDER BY d.position;

-- ended_among --
-- Which of these tasks have ended ($1 task ids; by the primary key).
SELECT task_id::text AS task_id FROM tasks
WHERE task_id = ANY($1::uuid[]) AND status IN ('succeeded', 'failed', 'cancelled');

-- pending_webhooks --
SELECT task_id, state->>'callback_url' AS callback_url FROM tasks WHERE webhook = 'pending'
ORDER BY updated_at;

-- select_all_events --
-- For rebuilds, in task order. $1 after (task_id, seq) as task_id, $2 seq, $3 limit
SELECT task_id, seq, type, schema_version, payload, recorded_at, position FROM task_events
WHERE (task_id, seq) > ($1::uuid, $2::int) ORDER BY task_id, seq LIMIT $3;

-- select_log_range --
-- One range of task ids of the log, each task's events together and in order: a rebuild's fold
-- reads it as COPY (...) TO STDOUT, hence no semicolon. $1 first task_id, $2 last (inclusive)
SELECT task_id, seq, type, schema_version, payload, recorded_at FROM task_events
WHERE task_id BETWEEN $1::uuid AND $2::uuid
ORDER BY task_id, seq

-- empty_read_model --
-- A rebuild's first step, in the transaction that then COPYs the new rows in: readers wait for
-- it (an ACCESS EXCLUSIVE lock), and unlike DELETE it leaves neither dead rows nor index bloat.
TRUNCATE tasks;

-- insert_read_model --
-- $1 task_id, $2 client_task_id, $3 workflow, $4 status, $5 priority, $6 webhook, $7 last_seq,
-- $8 created_at, $9 updated_at, $10 state, $11 tenant
INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook, last_seq,
                   created_at, updated_at, state, tenant)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- append_fleet_event --
-- $1 type, $2 schema_version, $3 payload
INSERT INTO fleet_events (type, schema_version, payload) VALUES ($1, $2, $3) RETURNING position;

-- select_fleet_events --
SELECT type, schema_version, payload FROM fleet_events ORDER BY position;
