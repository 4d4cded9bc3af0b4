"""`python -m comfy_fleet.cli.rebuild [DSN] [--full] [--snapshot-only] [--method sql|fold]
[--workers N]`.

Recompute the read model (`tasks`) from the log. Run it with the service stopped.

By default it starts from the fold snapshot (every task's state folded up to a point of the log,
kept by the previous rebuild or `--snapshot-only`) and folds only the events after it; with no
snapshot of this code's fold, one too far behind (over 30 % of the log after it), or `--full`,
it folds every task from its events alone. Either way the read model is the fold of the whole
log, and the snapshot is brought up to date.
`--snapshot-only` brings the snapshot up to date and leaves the read model alone: safe while the
service runs (the service itself does it every FOLD_SNAPSHOT_S), so that a rebuild has little
to fold.

How it works: comfy_fleet/log/rebuild.py.
"""

from __future__ import annotations

import argparse
import asyncio

from comfy_fleet.log.rebuild import METHODS, Rebuilt, rebuild, refresh_fold_snapshot


def describe(done: Rebuilt, snapshot_only: bool) -> str:
    """One line for a person."""
    what = (f"fold snapshot: {done.tasks} task(s)" if snapshot_only
            else f"rebuilt {done.tasks} task(s) from the log")
    how = (f"every task folded from its events ({done.full})" if done.full
           else f"from the fold snapshot and the {done.tail_events} event(s) of"
                f" {done.tail_tasks} task(s) after it")
    fixed = ("" if snapshot_only else
             f"; {done.removed} read-model row(s) were not the fold, {done.written} written")
    return f"{what}: {how}{fixed}; the snapshot now covers the log up to position {done.horizon}"


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m comfy_fleet.cli.rebuild", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[1:-1]),
    )
    ap.add_argument("dsn", nargs="?", help="default: DATABASE_URL (or RDB_*) from the environment")
    ap.add_argument("--full", action="store_true",
                    help="ignore the fold snapshot: fold every task from its events alone (and"
                         " write the snapshot anew)")
    ap.add_argument("--snapshot-only", action="store_true",
                    help="bring the fold snapshot up to date, not the read model (safe while the"
                         " service runs)")
    ap.add_argument("--method", choices=METHODS, default="sql",
                    help="how a full fold runs. sql (default): the common lifecycles folded in SQL,"
                         " the rest in Python; fold: every task folded in Python, in --workers"
                         " processes")
    ap.add_argument("--workers", type=int,
                    help="SQL sessions or fold processes of a full fold (default: one per core)")
    args = ap.parse_args()
    dsn = args.dsn
    if not dsn:
        from comfy_fleet.config import Settings

        dsn = Settings.from_env().database_url
    if not dsn:
        ap.exit(1, "comfy_fleet.cli.rebuild: no DATABASE_URL (or RDB_*) configured and no DSN given\n")
    run = refresh_fold_snapshot if args.snapshot_only else rebuild
    done = asyncio.run(run(dsn, args.workers, args.method, full=args.full))
    print(describe(done, args.snapshot_only))


if __name__ == "__main__":
    main()
