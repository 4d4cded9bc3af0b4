"""The layering rules hold: the import-linter contracts in pyproject.toml ([tool.importlinter])
are kept. A broken contract fails `make test` with import-linter's report of the offending
import chains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail("lint-imports is missing: install the dev extras (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    done = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_fold_imports_no_transport() -> None:
    """Importing the pure fold loads no HTTP client, URL library or Ray (it used to pull in the
    webhook sender for a one-line id)."""
    probe = (
        "import sys, comfy_fleet.log.task_state\n"
        "print(','.join(m for m in ('aiohttp', 'yarl', 'httpx', 'ray') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "", f"comfy_fleet.log.task_state loads {done.stdout.strip()}"
