-- `task_rebuild_stage` (0003) has not been written since the fold snapshot (0007) took its
-- place: the rebuild's SQL fold writes `fold_snapshot_rows`. An empty, unused table goes.
DROP TABLE IF EXISTS task_rebuild_stage;
