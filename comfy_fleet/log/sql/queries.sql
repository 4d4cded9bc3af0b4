-- Every query of comfy-fleet, as named blocks. asyncpg has positional parameters only: each
-- block's comment gives their order.

-- append_events --
-- Stores a batch of one task's events and upserts its read-model row, in one statement (one
-- implicit transaction, one round trip). $1 task_id, $2 seqs, $3 types, $4 versions,
-- $5 payloads, $6 recorded_at, $7 client_task_id, $8 workflow, $9 status, $10 priority,
-- $11 webhook, $12 last_seq, $13 created_at, $14 updated_at, $15 state, $16 expected_seq,
-- $17 queued notification payload (JSON text: the task was submitted or requeued) or NULL,
-- $18 ended notification payload (JSON text: the task reached an end or its webhook became
-- pending) or NULL, $19 tenant, $20 the task's batch_id when this append ended a task of a
-- batch, else NULL
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
), batch_ended AS (
    -- The webhook dispatcher checks whether the batch is complete, on commit.
    SELECT pg_notify('batch_tasks_ended_v1', $20::text) WHERE $20::text IS NOT NULL
)
SELECT (SELECT array_agg(position ORDER BY position) FROM ins) AS positions,
       (SELECT count(*) FROM up) AS upserted,
       (SELECT count(*) FROM notified) + (SELECT count(*) FROM queued)
           + (SELECT count(*) FROM ended) + (SELECT count(*) FROM batch_ended) AS notified;

-- append_events_many --
-- Several tasks' appends in one statement (one transaction, one commit): what `append_events`
-- does for one task, for each of them. (One task alone goes through `append_events`: through
-- these arrays it costs its writer and PostgreSQL about a quarter more, measured.) The caller
-- never puts one task in it twice. Any error (a seq taken, a client_task_id taken) undoes all
-- of it, and the caller then sends each append alone to learn whose it was. The events: $1 task
-- ids, $2 seqs, $3 types, $4 versions, $5 payloads, $6 recorded_at; the tasks, one entry
-- each: $7 task ids, $8 client_task_ids,
-- $9 workflows, $10 statuses, $11 priorities, $12 webhooks, $13 last_seqs, $14 created_at,
-- $15 updated_at, $16 states, $17 expected_seqs, $18 queued notification payloads, $19 ended
-- notification payloads, $20 tenants, $21 batch_ids of the batches a task of which this ended
-- (each NULL where there is none). Returns `upserted`, the 1-based places in $7 of the tasks
-- whose read-model row was written.
WITH ins AS (
    INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)
    SELECT u.task_id, u.seq, u.type, u.version, u.payload, u.at
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::smallint[], $5::jsonb[],
                $6::timestamptz[]) AS u(task_id, seq, type, version, payload, at)
    RETURNING 1
), up AS (
    INSERT INTO tasks AS t (task_id, client_task_id, workflow, status, priority, webhook,
                            last_seq, created_at, updated_at, state, tenant)
    SELECT u.task_id, u.ctid, u.workflow, u.status, u.priority, u.webhook, u.last_seq,
           u.created_at, u.updated_at, u.state, u.tenant
    FROM unnest($7::uuid[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
                $13::int[], $14::timestamptz[], $15::timestamptz[], $16::jsonb[], $20::text[])
        AS u(task_id, ctid, workflow, status, priority, webhook, last_seq, created_at,
             updated_at, state, tenant)
    ON CONFLICT (task_id) DO UPDATE
        SET status = EXCLUDED.status, webhook = EXCLUDED.webhook, last_seq = EXCLUDED.last_seq,
            updated_at = EXCLUDED.updated_at, state = EXCLUDED.state
        -- each task's own expected seq: its entry in $17, found by its position in $7
        WHERE t.last_seq = ($17::int[])[array_position($7::uuid[], t.task_id)]
    RETURNING array_position($7::uuid[], t.task_id) AS i
), notified AS (
    SELECT pg_notify('task_events_v1', u.task_id::text || ':' || u.last_seq::text)
    FROM unnest($7::uuid[], $13::int[]) AS u(task_id, last_seq)
), queued AS (
    SELECT pg_notify('tasks_queued_v1', p) FROM unnest($18::text[]) AS p WHERE p IS NOT NULL
), ended AS (
    SELECT pg_notify('tasks_ended_v1', p) FROM unnest($19::text[]) AS p WHERE p IS NOT NULL
), batch_ended AS (
    SELECT pg_notify('batch_tasks_ended_v1', p) FROM unnest($21::text[]) AS p WHERE p IS NOT NULL
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       (SELECT array_agg(i) FROM up) AS upserted,
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

-- append_batch --
-- A batch and all of its tasks, in one statement (one transaction, one round trip): the batch's
-- first event and read-model row, each task's `task.submitted` and read-model row, the further
-- events of some tasks (seq 2 on: the models fetched for them), and one notice for the router
-- (it then reads the batch's queued tasks). $1 batch_id, $2 batch event type, $3 its
-- schema_version, $4 its payload, $5 recorded_at, $6 tenant, $7 client_batch_id, $8 callback_url
-- (the batch's tenant is its tasks' too), $9 task ids, $10 task event payloads, $11 each task's
-- recorded_at, $12 client_task_ids, $13 workflows, $14 priorities, $15 states, $16
-- task.submitted's schema_version, $17 the queued notification payload, $18 each task's
-- last_seq; the further events: $19 their task ids, $20 seqs, $21 types, $22 schema_versions,
-- $23 payloads, $24 recorded_at (empty arrays when there are none)
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
), more AS (
    INSERT INTO task_events (task_id, seq, type, schema_version, payload, recorded_at)
    SELECT u.task_id, u.seq, u.type, u.version, u.payload, u.at
    FROM unnest($19::uuid[], $20::int[], $21::text[], $22::smallint[], $23::jsonb[],
                $24::timestamptz[]) AS u(task_id, seq, type, version, payload, at)
    RETURNING 1
), t AS (
    INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook, last_seq,
                       created_at, updated_at, state, tenant)
    SELECT u.task_id, u.ctid, u.workflow, 'queued', u.priority, NULL, u.last_seq, u.at, u.at,
           u.state, $6
    FROM unnest($9::uuid[], $12::text[], $13::text[], $14::int[], $11::timestamptz[],
                $15::jsonb[], $18::int[]) AS u(task_id, ctid, workflow, priority, at, state,
                                               last_seq)
    RETURNING 1
), queued AS (
    SELECT pg_notify('tasks_queued_v1', $17::text)
)
SELECT (SELECT count(*) FROM b) + (SELECT count(*) FROM rb) AS batch_rows,
       (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM more) AS more,
       (SELECT count(*) FROM t) AS tasks, (SELECT count(*) FROM queued) AS notified;

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
SELECT task_id, priority, created_at, workflow, state->'required_labels' AS labels, tenant
FROM tasks WHERE state->>'batch_id' = $1::text AND status = 'queued' ORDER BY created_at;

-- list_batch_tasks --
-- list_tasks within one batch. $1 status|null, $2 workflow|null, $3 client_task_id|null,
-- $4 cursor created_at|null, $5 cursor task_id|null, $6 limit, $7 tenant|null, $8 batch_id (text)
SELECT state, created_at, task_id FROM tasks
WHERE state->>'batch_id' = $8::text
  AND ($7::text IS NULL OR tenant = $7)
  AND ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR workflow = $2)
  AND ($3::text IS NULL OR client_task_id = $3)
  AND ($4::timestamptz IS NULL OR (created_at, task_id) < ($4, $5::uuid))
ORDER BY created_at DESC, task_id DESC
LIMIT $6;

-- taken_client_task_ids --
-- Which of these client_task_ids a task of the tenant already has. $1 tenant, $2 client_task_ids
SELECT client_task_id FROM tasks WHERE tenant = $1 AND client_task_id = ANY($2::text[]);

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
-- rebuild_plain_tasks --
-- A full rebuild's bulk, one range of task ids per session ($1 first task_id, $2 last,
-- inclusive), as of one snapshot: the read-model rows of the tasks whose events take the common
-- path, folded here exactly as comfy_fleet/log/task_state.py's `apply` does (same status, webhook
-- and state JSON, times as Python's isoformat in UTC), so they never travel to Python and back,
-- into the fold snapshot's rows (fold_snapshot_rows, emptied before). tests/integration/
-- test_rebuild_sql.py compares every row with `replay`. The other tasks get no row here;
-- select_log_unfolded then hands them to the Python fold.
-- Written for schema version 1 of every event type (events.py): a task with an event of
-- another version is left to the Python fold. Part of the fold: its text is in the fold
-- snapshot's FOLD_VERSION, so a change of it refolds the whole log once.
WITH e AS (
    -- Each event, with whether it is one the SQL below folds exactly as task_state.apply does
    -- (ok: schema version 1, the fields it reads present and of the types the fold assumes).
    -- No window (its task's last event, for updated_at): the final SELECT looks that one up.
    SELECT task_id, seq, type, payload AS p, recorded_at AS at,
           schema_version = 1 AND CASE type
               WHEN 'task.submitted' THEN seq = 1
                   AND payload ?& ARRAY['workflow', 'workflow_version', 'params', 'prompt',
                       'client_task_id', 'callback_url', 'priority', 'request_hash', 'origin',
                       'inputs', 'required_labels']
                   -- tenant, models, model_files, batch_id, seeds_drawn, rerun_of came
                   -- later: optional (defaults below)
                   AND payload - ARRAY['workflow', 'workflow_version', 'params', 'prompt',
                       'client_task_id', 'callback_url', 'priority', 'request_hash', 'origin',
                       'inputs', 'required_labels', 'tenant', 'models', 'model_files',
                       'batch_id', 'seeds_drawn', 'rerun_of'] = '{}'
                   AND jsonb_typeof(coalesce(payload->'tenant', '"default"')) = 'string'
                   AND coalesce(jsonb_typeof(payload->'batch_id'), 'null') IN ('string', 'null')
                   AND coalesce(jsonb_typeof(payload->'models'), 'array') = 'array'
                   AND coalesce(jsonb_typeof(payload->'model_files'), 'array') = 'array'
                   AND coalesce(jsonb_typeof(payload->'seeds_drawn'), 'array') = 'array'
                   AND coalesce(jsonb_typeof(payload->'rerun_of'), 'null') IN ('string', 'null')
                   AND jsonb_typeof(payload->'workflow') = 'string'
                   AND jsonb_typeof(payload->'client_task_id') IN ('string', 'null')
                   AND jsonb_typeof(payload->'callback_url') IN ('string', 'null')
                   AND jsonb_typeof(payload->'inputs') = 'array'
                   AND jsonb_typeof(payload->'required_labels') = 'array'
                   AND payload->>'priority' ~ '^-?[0-9]{1,9}$'
               WHEN 'task.dispatched' THEN seq = 2
                   AND payload ?& ARRAY['endpoint', 'prompt_id', 'attempt']
               WHEN 'task.prompt_queued' THEN payload ? 'prompt_id'
               WHEN 'task.started' THEN payload ? 'prompt_id'
               WHEN 'task.progressed' THEN payload ?& ARRAY['prompt_id', 'value', 'max']
               WHEN 'task.output_stored' THEN payload ?& ARRAY['prompt_id', 'index', 'node_id',
                       'filename', 'subfolder', 'kind', 'content_type', 'size', 'sha256', 's3_key']
                   -- no other key (the output below is the payload less prompt_id and index)
                   AND payload - ARRAY['prompt_id', 'index', 'node_id', 'filename', 'subfolder',
                       'kind', 'content_type', 'size', 'sha256', 's3_key', 'fallback_path'] = '{}'
                   AND coalesce(jsonb_typeof(payload->'fallback_path'), 'null') IN ('string', 'null')
               WHEN 'task.succeeded' THEN payload ? 'prompt_id'
               WHEN 'task.failed' THEN payload ?& ARRAY['code', 'message']
                   AND coalesce(jsonb_typeof(payload->'node_id'), 'null') IN ('string', 'null')
                   AND coalesce(jsonb_typeof(payload->'node_type'), 'null') IN ('string', 'null')
               WHEN 'webhook.attempted' THEN payload ? 'webhook_id'
                   AND payload->>'attempt' ~ '^[0-9]{1,9}$'
               WHEN 'webhook.delivered' THEN payload ?& ARRAY['webhook_id', 'status_code']
                   AND payload->>'attempt' ~ '^[0-9]{1,9}$'
               WHEN 'webhook.dead' THEN payload ?& ARRAY['webhook_id', 'attempts']
               ELSE false
           END AND (type NOT IN ('task.dispatched', 'task.prompt_queued', 'task.started',
                                 'task.progressed', 'task.output_stored', 'task.succeeded')
                    OR jsonb_typeof(payload->'prompt_id') = 'string') AS ok,
           CASE WHEN type IN ('task.dispatched', 'task.prompt_queued', 'task.started',
                              'task.progressed', 'task.output_stored', 'task.succeeded')
                THEN payload->>'prompt_id' END COLLATE "C" AS pid
    FROM task_events
    WHERE task_id BETWEEN $1::uuid AND $2::uuid
), t AS (
    -- Per task, without ordered aggregates (each would sort per task): what the state needs.
    SELECT task_id,
           bool_and(ok) AS ok, count(*) AS n, max(seq) AS last_seq,
           (array_agg(p) FILTER (WHERE seq = 1 AND type = 'task.submitted'))[1] AS sub,
           min(at) FILTER (WHERE seq = 1) AS created_at,
           (array_agg(p) FILTER (WHERE type = 'task.dispatched'))[1] AS disp,
           count(*) FILTER (WHERE type = 'task.dispatched') AS n_disp,
           count(pid) AS n_pid, min(pid) AS min_pid, max(pid) AS max_pid,
           count(*) FILTER (WHERE type IN ('task.succeeded', 'task.failed')) AS n_end,
           min(seq) FILTER (WHERE type IN ('task.succeeded', 'task.failed')) AS end_seq,
           min(type) FILTER (WHERE type IN ('task.succeeded', 'task.failed')) AS end_type,
           (array_agg(p) FILTER (WHERE type IN ('task.succeeded', 'task.failed')))[1] AS end_p,
           min(at) FILTER (WHERE type IN ('task.succeeded', 'task.failed')) AS finished_at,
           max(seq) FILTER (WHERE type IN ('task.started', 'task.progressed')) AS run_seq,
           max(seq) FILTER (WHERE type = 'task.progressed') AS prog_seq,
           count(*) FILTER (WHERE type = 'task.output_stored') AS n_out,
           -- An output is its event's payload less prompt_id, index and an empty fallback_path.
           jsonb_agg(p - ARRAY['prompt_id', 'index', CASE WHEN coalesce(p->>'fallback_path', '')
                                                          = '' THEN 'fallback_path' END]
               ) FILTER (WHERE type = 'task.output_stored') AS outputs,
           min(seq) FILTER (WHERE type LIKE 'webhook.%') AS hook_first,
           max(seq) FILTER (WHERE type = 'webhook.delivered') AS delivered_seq,
           max(seq) FILTER (WHERE type = 'webhook.dead') AS dead_seq,
           max((p->>'attempt')::int)
               FILTER (WHERE type IN ('webhook.attempted', 'webhook.delivered')) AS hook_attempts
    FROM e
    GROUP BY task_id
), plain AS (
    -- The tasks whose fold this SQL reproduces: seqs 1..n, submitted then dispatched at 2 (or
    -- nothing else), one prompt id, at most one end (succeeded/failed) and one output, no
    -- start or progress after the end, webhook tries only after it. No cancel, requeue,
    -- recovery or redelivery. Everything else is left to the Python fold.
    SELECT t.*,
           CASE end_type WHEN 'task.succeeded' THEN 'succeeded' WHEN 'task.failed' THEN 'failed'
               ELSE CASE WHEN run_seq IS NOT NULL THEN 'running'
                         WHEN disp IS NOT NULL THEN 'dispatched' ELSE 'queued' END
           END AS status,
           CASE WHEN end_seq IS NULL THEN NULL
                WHEN coalesce(delivered_seq, 0) > coalesce(dead_seq, 0) THEN 'delivered'
                WHEN dead_seq IS NOT NULL THEN 'dead'
                WHEN coalesce(sub->>'callback_url', '') <> '' THEN 'pending'
           END AS webhook
    FROM t
    WHERE ok AND n = last_seq AND sub IS NOT NULL
      AND (n = 1 OR (n_disp = 1 AND disp IS NOT NULL))
      AND n_end <= 1
      AND (run_seq IS NULL OR end_seq IS NULL OR run_seq < end_seq)
      AND (hook_first IS NULL OR hook_first > end_seq)
      AND (n_pid = 0 OR min_pid = max_pid)
      AND n_out <= 1
)
INSERT INTO fold_snapshot_rows (task_id, client_task_id, workflow, status, priority, webhook,
                                last_seq, created_at, updated_at, state, tenant)
SELECT task_id, sub->>'client_task_id', sub->>'workflow', status, (sub->>'priority')::int,
       webhook, last_seq, created_at, updated_at,
       -- One object built at once (each `||` would encode the whole state again). The
       -- submitted event's fields, of which `models`, `model_files`, `batch_id`, `tenant`,
       -- `seeds_drawn` and `rerun_of` came later (absent from events recorded before them).
       jsonb_build_object(
           'workflow', sub->'workflow', 'workflow_version', sub->'workflow_version',
           'params', sub->'params', 'prompt', sub->'prompt',
           'client_task_id', sub->'client_task_id', 'callback_url', sub->'callback_url',
           'priority', sub->'priority', 'request_hash', sub->'request_hash',
           'origin', sub->'origin', 'inputs', sub->'inputs',
           'required_labels', sub->'required_labels',
           'models', coalesce(sub->'models', '[]'),
           'model_files', coalesce(sub->'model_files', '[]'), 'batch_id', sub->'batch_id',
           -- A task recorded before tenants existed belongs to tenant "default".
           'tenant', coalesce(sub->'tenant', '"default"'),
           'task_id', task_id, 'seq', last_seq,
           'seeds_drawn', coalesce(sub->'seeds_drawn', '[]'), 'rerun_of', sub->'rerun_of',
           'created_at', replace(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), '.000000+', '+'),
           'updated_at', replace(to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), '.000000+', '+'),
           'status', status,
           'attempt', coalesce(disp->'attempt', '0'),
           'endpoint', disp->'endpoint', 'prompt_id', disp->'prompt_id',
           'progress', CASE WHEN prog_seq IS NOT NULL THEN (
               SELECT jsonb_build_object('value', payload->'value', 'max', payload->'max',
                                         'node', coalesce(payload->'node', 'null'))
               FROM task_events AS pe WHERE pe.task_id = plain.task_id AND pe.seq = prog_seq)
               END,
           'outputs', coalesce(outputs, '[]'),
           'error', CASE WHEN end_type = 'task.failed' THEN
               jsonb_build_object('code', end_p->'code', 'message', end_p->'message')
               || CASE WHEN coalesce(end_p->>'node_id', '') <> ''
                       THEN jsonb_build_object('node_id', end_p->'node_id') ELSE '{}' END
               || CASE WHEN coalesce(end_p->>'node_type', '') <> ''
                       THEN jsonb_build_object('node_type', end_p->'node_type') ELSE '{}' END
               || CASE WHEN coalesce(end_p->'details', 'null') <> 'null'
                       THEN jsonb_build_object('details', end_p->'details') ELSE '{}' END
               END,
           'finished_at', replace(to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), '.000000+', '+'),
           'end_seq', end_seq, 'end_type', end_type,
           'cancel_requested', false, 'webhook', webhook,
           'webhook_attempts', greatest(0, coalesce(hook_attempts, 0)),
           'past_prompt_ids', '[]'::jsonb, 'past_webhook_ids', '[]'::jsonb),
       coalesce(sub->>'tenant', 'default')
FROM (
    -- Its last event's time: seqs are 1..last_seq (plain), so that event is at last_seq.
    -- OFFSET 0: once per task, not once per use.
    SELECT plain.*, (SELECT l.recorded_at FROM task_events AS l
                     WHERE l.task_id = plain.task_id AND l.seq = plain.last_seq) AS updated_at
    FROM plain
    OFFSET 0
) AS plain;

-- select_fold_snapshot --
-- The fold snapshot's description (no row: there is none).
SELECT fold_version, horizon, taken_at FROM fold_snapshot;

-- forget_fold_snapshot --
-- Before the fold snapshot's rows are replaced by a full fold: until save_fold_snapshot, they
-- count for nothing.
DELETE FROM fold_snapshot;

-- empty_fold_snapshot_rows --
TRUNCATE fold_snapshot_rows;

-- analyze_fold_snapshot_rows --
-- After a full fold wrote the rows: the tail's plan joins the log with them.
ANALYZE fold_snapshot_rows;

-- count_fold_snapshot_rows --
SELECT count(*) FROM fold_snapshot_rows;

-- save_fold_snapshot --
-- In the transaction that brought the rows up to date. $1 fold_version, $2 horizon
INSERT INTO fold_snapshot (fold_version, horizon) VALUES ($1, $2)
ON CONFLICT (one) DO UPDATE
    SET fold_version = EXCLUDED.fold_version, horizon = EXCLUDED.horizon,
        taken_at = EXCLUDED.taken_at;

-- lock_log --
-- First statement of a transaction (before its snapshot): waits for the appends in flight and
-- holds new ones until the transaction ends, so the transaction sees every event that will ever
-- have a position up to log_end. Reads are not held.
LOCK TABLE task_events IN SHARE MODE;

-- limit_lock_wait --
-- For this transaction, how long a lock may be waited for. $1 a duration ('1s')
SELECT set_config('lock_timeout', $1, true);

-- log_end --
-- The log's last position.
SELECT coalesce(max(position), 0) AS last FROM task_events;

-- select_log_unfolded --
-- What the fold snapshot's rows lack, for the Python fold (LogFold; COPY (...) TO STDOUT, hence
-- no semicolon): every event after position $1 that its task's row does not cover (seq above
-- its last_seq; every event of a task without a row), each task's together and in seq order,
-- after its row's state when it has one (a line of type '' at seq last_seq, state as payload).
-- $1 horizon (0: the whole log)
WITH tail AS MATERIALIZED (
    SELECT e.task_id, e.seq, e.type, e.schema_version, e.payload, e.recorded_at,
           s.last_seq IS NOT NULL AS continued
    FROM task_events AS e LEFT JOIN fold_snapshot_rows AS s ON s.task_id = e.task_id
    WHERE e.position > $1 AND e.seq > coalesce(s.last_seq, 0)
)
SELECT task_id, seq, type, schema_version, payload, recorded_at FROM tail
UNION ALL
SELECT s.task_id, s.last_seq, '', 0, s.state, s.updated_at
FROM fold_snapshot_rows AS s
WHERE s.task_id IN (SELECT task_id FROM tail WHERE continued)
ORDER BY 1, 2

-- delete_fold_snapshot_rows --
-- The rows of tasks folded again (their new rows follow by COPY). $1 task ids
DELETE FROM fold_snapshot_rows WHERE task_id = ANY($1::uuid[]);

-- delete_read_model_rows_not_folded --
-- A rebuild's last step, first half, in the transaction that brought the fold snapshot up to
-- date under lock_log: delete every read-model row that is not, byte for byte, its task's row
-- in the snapshot (`*=` compares the rows' binary images, as REFRESH MATERIALIZED VIEW
-- CONCURRENTLY does; the two tables have the same columns, tests/integration/
-- test_migrations.py), and the row of any task the snapshot lacks. By the primary key (a hash
-- of every row would spill to disk). Readers see the old rows until the commit.
DELETE FROM tasks AS t
WHERE NOT EXISTS (SELECT 1 FROM fold_snapshot_rows AS s WHERE s.task_id = t.task_id AND s *= t);

-- insert_read_model_rows_missing --
-- Second half: the snapshot's rows the read model now lacks. Every row left by the first half
-- equals its snapshot row, so the read model becomes the snapshot's rows (a unique violation
-- here is one between the fold's own rows).
INSERT INTO tasks (task_id, client_task_id, workflow, status, priority, webhook, last_seq,
                   created_at, updated_at, state, tenant)
SELECT task_id, client_task_id, workflow, status, priority, webhook, last_seq,
       created_at, updated_at, state, tenant
FROM fold_snapshot_rows AS s
WHERE NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.task_id = s.task_id);

-- prefer_index_joins --
-- For the rest of the transaction: join by index rather than by hashing (see
-- delete_read_model_rows_not_folded).
SELECT set_config('enable_hashjoin', 'off', true);

-- insert_workflow_version --
-- Stores a workflow version unless it is already stored (the first store wins: the bytes are
-- what the version names, so a second store would write the same). $1 name, $2 version,
-- $3 graph_json, $4 manifest_toml
INSERT INTO workflow_versions (name, version, graph_json, manifest_toml)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name, version) DO NOTHING;

-- select_workflow_version --
-- $1 name, $2 version
SELECT name, version, graph_json, manifest_toml, created_at
FROM workflow_versions WHERE name = $1 AND version = $2;

-- list_workflow_versions --
-- Every stored version of one workflow, oldest first. $1 name
SELECT name, version, graph_json, manifest_toml, created_at
FROM workflow_versions WHERE name = $1 ORDER BY created_at, version;
