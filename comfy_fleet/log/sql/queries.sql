-- Every query of comfy-fleet, as named blocks. asyncpg has positional parameters only: each
-- block's comment gives their order.

-- append_events --
-- Stores a batch of one task's events and upserts its read-model row, in one statement (one
-- implicit transaction, one round trip). $1 task_id, $2 seqs, $3 types, $4 versions,
-- $5 payloads, $6 recorded_at, $7 client_task_id, $8 workflow, $9 status, $10 priority,
-- $11 webhook, $12 last_seq, $13 created_at, $14 updated_at, $15 state, $16 expected_seq,
-- $17 queued notification payload (JSON text: the task was submitted or requeued) or NULL,
-- $18 ended notification payload (JSON text: the task reached an end or its webhook became
-- pending) or NULL, $19 the task's batch_id when this append ended a task of a batch, else NULL
WITH ins AS (
    INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)
    SELECT $1, u.seq, u.type, u.version, u.payload, u.at
    FROM unnest($2::int[], $3::text[], $4::smallint[], $5::jsonb[], $6::timestamptz[])
        AS u(seq, type, version, payload, at)
    RETURNING position
), up AS (
    INSERT INTO tasks AS t (task_id, client_task_id, workflow, status, priority, webhook,
                            last_seq, created_at, updated_at, state)
    VALUES ($1, $7, $8, $9, $10, $11, $12, $13, $14, $15)
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
), batch_ended AS (
    -- The webhook dispatcher checks whether the batch is complete, on commit.
    SELECT pg_notify('batch_tasks_ended_v1', $19::text) WHERE $19::text IS NOT NULL
)
SELECT (SELECT array_agg(position ORDER BY position) FROM ins) AS positions,
       (SELECT count(*) FROM up) AS upserted,
       (SELECT count(*) FROM notified) + (SELECT count(*) FROM queued)
           + (SELECT count(*) FROM ended) + (SELECT count(*) FROM batch_ended) AS notified;

-- select_task_events --
-- $1 task_id, $2 after_seq
SELECT seq, type, schema_version, payload, recorded_at, position
FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq;

-- select_task_state --
-- $1 task_id
SELECT state FROM tasks WHERE task_id = $1;

-- select_client_task --
-- $1 client_task_id
SELECT state FROM tasks WHERE client_task_id = $1;

-- list_tasks --
-- Newest first, keyset paging. $1 status|null, $2 workflow|null, $3 client_task_id|null,
-- $4 cursor created_at|null, $5 cursor task_id|null, $6 limit
SELECT state, created_at, task_id FROM tasks
WHERE ($1::text IS NULL OR status = $1)
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
SELECT task_id, priority, created_at, workflow, state->'required_labels' AS labels
FROM tasks WHERE status = 'queued' ORDER BY created_at;

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
-- $8 created_at, $9 updated_at, $10 state
INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook, last_seq,
                   created_at, updated_at, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- append_fleet_event --
-- $1 type, $2 schema_version, $3 payload
INSERT INTO fleet_events (type, schema_version, payload) VALUES ($1, $2, $3) RETURNING position;

-- select_fleet_events --
SELECT type, schema_version, payload FROM fleet_events ORDER BY position;

-- append_batch --
-- A batch and all of its tasks, in one statement (one transaction, one round trip): the batch's
-- first event and read-model row, each task's `task.submitted` and read-model row, and one
-- notice for the router (it then reads the batch's queued tasks). $1 batch_id, $2 batch event
-- type, $3 its schema_version, $4 its payload, $5 recorded_at, $6 tenant, $7 client_batch_id,
-- $8 callback_url, $9 task ids, $10 task event payloads, $11 each task's recorded_at,
-- $12 client_task_ids, $13 workflows, $14 priorities, $15 states, $16 task.submitted's
-- schema_version, $17 the queued notification payload
WITH b AS (
    INSERT INTO batch_events (batch_id, seq, type, schema_version, payload, recorded_at)
    VALUES ($1, 1, $2, $3, $4, $5)
    RETURNING 1
), rb AS (
    INSERT INTO batches (batch_id, tenant, client_batch_id, status, webhook, callback_url,
                         last_seq, created_at, updated_at)
    VALUES ($1, $6, $7, 'running', NULL, $8, 1, $5, $5)
    RETURNING 1
), ev AS (
    INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)
    SELECT u.task_id, 1, 'task.submitted', $16, u.payload, u.at
    FROM unnest($9::uuid[], $10::jsonb[], $11::timestamptz[]) AS u(task_id, payload, at)
    RETURNING 1
), t AS (
    INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook, last_seq,
                       created_at, updated_at, state)
    SELECT u.task_id, u.ctid, u.workflow, 'queued', u.priority, NULL, 1, u.at, u.at, u.state
    FROM unnest($9::uuid[], $12::text[], $13::text[], $14::int[], $11::timestamptz[],
                $15::jsonb[]) AS u(task_id, ctid, workflow, priority, at, state)
    RETURNING 1
), queued AS (
    SELECT pg_notify('tasks_queued_v1', $17::text)
)
SELECT (SELECT count(*) FROM b) + (SELECT count(*) FROM rb) AS batch_rows,
       (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM t) AS tasks,
       (SELECT count(*) FROM queued) AS notified;

-- append_batch_events --
-- Events of one batch's stream after the first, with its read-model row, in one statement.
-- A seq already taken is a unique violation (the caller's ConcurrencyConflict). $1 batch_id,
-- $2 seqs, $3 types, $4 versions, $5 payloads, $6 recorded_at, $7 status, $8 webhook,
-- $9 last_seq, $10 updated_at, $11 expected_seq
WITH ins AS (
    INSERT INTO batch_events (batch_id, seq, type, schema_version, payload, recorded_at)
    SELECT $1, u.seq, u.type, u.version, u.payload, u.at
    FROM unnest($2::int[], $3::text[], $4::smallint[], $5::jsonb[], $6::timestamptz[])
        AS u(seq, type, version, payload, at)
    RETURNING 1
), up AS (
    UPDATE batches SET status = $7, webhook = $8, last_seq = $9, updated_at = $10
    WHERE batch_id = $1 AND last_seq = $11
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM up) AS updated;

-- select_batch_events --
-- $1 batch_id
SELECT seq, type, schema_version, payload, recorded_at, position
FROM batch_events WHERE batch_id = $1 ORDER BY seq;

-- select_client_batch --
-- $1 tenant, $2 client_batch_id
SELECT batch_id::text AS batch_id FROM batches WHERE tenant = $1 AND client_batch_id = $2;

-- batch_counts --
-- A batch's tasks by status (the index tasks_batch). $1 batch_id (text)
SELECT status, count(*) AS n FROM tasks
WHERE state->>'batch_id' = $1::text GROUP BY status;

-- batch_last_end --
-- When the last of a batch's tasks ended (read only once all have). $1 batch_id (text)
SELECT max((state->>'finished_at')::timestamptz) FROM tasks WHERE state->>'batch_id' = $1::text;

-- open_tasks_of_batch --
-- The ids of a batch's tasks not yet ended. $1 batch_id (text)
SELECT task_id::text AS task_id FROM tasks
WHERE state->>'batch_id' = $1::text AND status NOT IN ('succeeded', 'failed', 'cancelled')
ORDER BY created_at;

-- queued_tasks_of_batch --
-- As queued_tasks, for one batch (the router's reading of a batch's notice). $1 batch_id (text)
SELECT task_id, priority, created_at, workflow, state->'required_labels' AS labels
FROM tasks WHERE state->>'batch_id' = $1::text AND status = 'queued' ORDER BY created_at;

-- list_batch_tasks --
-- list_tasks within one batch. $1 status|null, $2 workflow|null, $3 client_task_id|null,
-- $4 cursor created_at|null, $5 cursor task_id|null, $6 limit, $7 batch_id (text)
SELECT state, created_at, task_id FROM tasks
WHERE state->>'batch_id' = $7::text
  AND ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR workflow = $2)
  AND ($3::text IS NULL OR client_task_id = $3)
  AND ($4::timestamptz IS NULL OR (created_at, task_id) < ($4, $5::uuid))
ORDER BY created_at DESC, task_id DESC
LIMIT $6;

-- taken_client_task_ids --
-- Which of these client_task_ids a task already has. $1 client_task_ids
SELECT client_task_id FROM tasks WHERE client_task_id = ANY($1::text[]);

-- batches_to_complete --
-- Running batches none of whose tasks is open: their `batch.completed` is still to record
-- (its notice was lost). Oldest first; $1 limit
SELECT b.batch_id::text AS batch_id FROM batches b
WHERE b.status = 'running' AND NOT EXISTS (
    SELECT 1 FROM tasks t WHERE t.state->>'batch_id' = b.batch_id::text
      AND t.status NOT IN ('succeeded', 'failed', 'cancelled'))
ORDER BY b.created_at
LIMIT $1;

-- pending_batch_webhooks --
SELECT batch_id::text AS batch_id, callback_url FROM batches WHERE webhook = 'pending'
ORDER BY updated_at;
