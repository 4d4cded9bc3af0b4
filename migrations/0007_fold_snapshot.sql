-- The fold snapshot (comfy_fleet/log/fold_snapshot.py): every task's read-model row as the fold of
-- its events up to its `last_seq`, so that a rebuild (`make rebuild`) folds only the events after
-- it. Derived from the log alone and read by rebuilds only, never by the service: a cache, not a
-- source of truth. UNLOGGED: no WAL to write it, and a crash empties both tables, after which the
-- next rebuild folds the whole log. Its rows count only while `fold_version` is the digest of the
-- running code's fold (a release that changes the fold refolds the whole log once).
--
-- A migration that adds a column to `tasks` adds it here too (the rows are the read model's).
-- `task_rebuild_stage` (0003) is no longer written: the SQL fold now writes here.

CREATE UNLOGGED TABLE fold_snapshot (
    -- At most one row: the snapshot's description.
    one           boolean      PRIMARY KEY DEFAULT true CHECK (one),
    -- Digest of the code that folded the rows (`fold_snapshot.FOLD_VERSION`).
    fold_version  text         NOT NULL,
    -- Every event at or below this position of the log is folded into the rows; events after
    -- it may be too (each row's last_seq says how far its task's are).
    horizon       bigint       NOT NULL,
    taken_at      timestamptz  NOT NULL DEFAULT clock_timestamp()
);

CREATE UNLOGGED TABLE fold_snapshot_rows (LIKE tasks, PRIMARY KEY (task_id));
