"""`python -m comfy_fleet.cli.rebuild [DSN] [--method sql|fold] [--workers N]`: recompute the read
model (`tasks`) from the log. Run it with the service stopped.

How it works: comfy_fleet/log/rebuild.py.
"""

from __future__ import annotations

import argparse
import asyncio

from comfy_fleet.log.rebuild import METHODS, rebuild_read_model


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m comfy_fleet.cli.rebuild", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    ap.add_argument("dsn", nargs="?", help="default: DATABASE_URL (or RDB_*) from the environment")
    ap.add_argument("--method", choices=METHODS, default="sql",
                    help="sql (default): the common lifecycles folded in SQL, the rest in Python;"
                         " fold: every task folded in Python, in --workers processes")
    ap.add_argument("--workers", type=int, help="fold processes of --method fold (default: one per core)")
    args = ap.parse_args()
    dsn = args.dsn
    if not dsn:
        from comfy_fleet.config import Settings

        dsn = Settings.from_env().database_url
    if not dsn:
        ap.exit(1, "comfy_fleet.cli.rebuild: no DATABASE_URL (or RDB_*) configured and no DSN given\n")
    print(f"rebuilt {asyncio.run(rebuild_read_model(dsn, args.workers, args.method))} task(s) from the log")


if __name__ == "__main__":
    main()
