-- Scratch space of `python -m comfy_fleet.cli.rebuild`: its parallel SQL folds write the rows of
-- the common lifecycles here (each in a session of its own, without WAL), and the rebuild's
-- transaction moves them into `tasks` in one INSERT. Empty except during a rebuild; UNLOGGED,
-- so a crash only empties it. Same columns as `tasks`, no keys or indexes (the move checks them).
CREATE UNLOGGED TABLE task_rebuild_stage (LIKE tasks);
