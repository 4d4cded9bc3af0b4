-- Every version of every workflow a task has used: the two files' bytes exactly as read, stored
-- once when first used (comfy_fleet/workflows/versions.py), so a task runs the version it was
-- accepted with however the files change, and old versions stay readable. Append-only like the
-- log: a version's bytes are what its digest names, so a row never has a reason to change.

CREATE TABLE workflow_versions (
    name            text         NOT NULL,
    version         text         NOT NULL,
    graph_json      bytea        NOT NULL,
    manifest_toml   bytea        NOT NULL,
    created_at      timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, version)
);

CREATE FUNCTION workflow_versions_append_only_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow_versions is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER workflow_versions_append_only
    BEFORE UPDATE OR DELETE ON workflow_versions
    FOR EACH ROW EXECUTE FUNCTION workflow_versions_append_only_v1();

CREATE TRIGGER workflow_versions_no_truncate
    BEFORE TRUNCATE ON workflow_versions
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_versions_append_only_v1();
