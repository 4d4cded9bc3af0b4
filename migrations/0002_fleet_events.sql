-- Facts about the fleet itself (endpoints added or removed at run time), append-only like the
-- task log, so a restart keeps them.

CREATE TABLE fleet_events (
    position        bigserial    PRIMARY KEY,
    type            text         NOT NULL,
    schema_version  smallint     NOT NULL DEFAULT 1,
    payload         jsonb        NOT NULL,
    recorded_at     timestamptz  NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION fleet_events_append_only_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fleet_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER fleet_events_append_only
    BEFORE UPDATE OR DELETE ON fleet_events
    FOR EACH ROW EXECUTE FUNCTION fleet_events_append_only_v1();

CREATE TRIGGER fleet_events_no_truncate
    BEFORE TRUNCATE ON fleet_events
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_events_append_only_v1();
