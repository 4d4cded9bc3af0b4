-- Batches (POST /batches): a batch is a stream of its own in `batch_events`, append-only like
-- `task_events`; its tasks are ordinary tasks whose `task.submitted` (and so their folded state)
-- carries `batch_id`. All of it is recorded in one transaction.

CREATE TABLE batch_events (
    position        bigserial    NOT NULL UNIQUE,
    batch_id        uuid         NOT NULL,
    -- Per-batch sequence: `batch.completed` is recorded once because its seq is taken once.
    seq             integer      NOT NULL CHECK (seq > 0),
    type            text         NOT NULL,
    schema_version  smallint     NOT NULL DEFAULT 1,
    payload         jsonb        NOT NULL,
    recorded_at     timestamptz  NOT NULL,
    PRIMARY KEY (batch_id, seq)
);

CREATE FUNCTION batch_events_append_only_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batch_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER batch_events_append_only
    BEFORE UPDATE OR DELETE ON batch_events
    FOR EACH ROW EXECUTE FUNCTION batch_events_append_only_v1();

CREATE TRIGGER batch_events_no_truncate
    BEFORE TRUNCATE ON batch_events
    FOR EACH STATEMENT EXECUTE FUNCTION batch_events_append_only_v1();

-- The batches' read model, written in the statement that appends to the batch's stream: what
-- must be found by key or scanned (idempotency per tenant, running batches, the webhook
-- outbox). The batch itself is the fold of its stream; its counts are its tasks' statuses.
CREATE TABLE batches (
    batch_id         uuid         PRIMARY KEY,
    tenant           text         NOT NULL,
    client_batch_id  text,
    status           text         NOT NULL,
    webhook          text,
    callback_url     text,
    last_seq         integer      NOT NULL,
    created_at       timestamptz  NOT NULL,
    updated_at       timestamptz  NOT NULL,
    CONSTRAINT batches_tenant_client_batch_id_key UNIQUE (tenant, client_batch_id)
);

CREATE INDEX batches_running ON batches (created_at) WHERE status = 'running';
CREATE INDEX batches_webhook_pending ON batches (updated_at) WHERE webhook = 'pending';

-- A batch's tasks by status (its live counts, GET /tasks?batch_id=): an expression on the folded
-- state rather than a column, so every writer of the read model (appends, rebuilds) keeps it
-- right without knowing of it. Queries compare `state->>'batch_id'` (text) to match it.
CREATE INDEX tasks_batch ON tasks ((state->>'batch_id'), status)
    WHERE state->>'batch_id' IS NOT NULL;
