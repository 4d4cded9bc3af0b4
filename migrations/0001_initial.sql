-- The append-only event log and the read model of folded task states.

CREATE TABLE task_events (
    -- Global order of the log (a bigserial can commit out of order: readers of the whole log
    -- page by position only for rebuilds, never to tail it live; see comfy_fleet/log/postgres.py).
    position        bigserial    NOT NULL UNIQUE,
    task_id         uuid         NOT NULL,
    -- Per-task sequence: the primary key makes a stale writer conflict, never duplicate.
    seq             integer      NOT NULL CHECK (seq > 0),
    type            text         NOT NULL,
    schema_version  smallint     NOT NULL DEFAULT 1,
    payload         jsonb        NOT NULL,
    recorded_at     timestamptz  NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- Append-only is a fact of the database, not a convention.
CREATE FUNCTION task_events_append_only_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER task_events_append_only
    BEFORE UPDATE OR DELETE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only_v1();

CREATE TRIGGER task_events_no_truncate
    BEFORE TRUNCATE ON task_events
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_append_only_v1();

-- The read model: one row per task holding its folded state, written in the same statement
-- as the events (so it never lags); `python -m comfy_fleet.cli.rebuild` recomputes it from the log.
CREATE TABLE tasks (
    task_id         uuid         PRIMARY KEY,
    client_task_id  text         UNIQUE,
    workflow        text         NOT NULL,
    status          text         NOT NULL,
    priority        integer      NOT NULL,
    webhook         text,
    last_seq        integer      NOT NULL,
    created_at      timestamptz  NOT NULL,
    updated_at      timestamptz  NOT NULL,
    state           jsonb        NOT NULL
);

CREATE INDEX tasks_newest ON tasks (created_at DESC, task_id DESC);
CREATE INDEX tasks_open ON tasks (created_at)
    WHERE status NOT IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX tasks_webhook_pending ON tasks (updated_at) WHERE webhook = 'pending';
