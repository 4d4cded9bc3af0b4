"""`python -m comfy_fleet_client …` runs the `comfy-fleet` command."""

from __future__ import annotations

from comfy_fleet_client import cli

raise SystemExit(cli.main())
