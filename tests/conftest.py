"""Shared fixtures: a PostgreSQL database of the test run's own (migrated template, cloned per
test that asks), and the markers. Services are real; only ComfyUI is a stand-in."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from comfy_fleet.cli import migrate

# The running service (`fleet`, `receiver`), shared by tests/e2e and tests/security.
pytest_plugins = ["tests.support.fleet"]

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _with_db(dsn: str, name: str) -> str:
    from comfy_fleet_devstack.postgres import with_database

    return with_database(dsn, name)


@pytest.fixture(scope="session")
async def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """TEST_DATABASE_URL, else the server on 127.0.0.1:5432, else an embedded one (pgserver)."""
    from comfy_fleet_devstack.postgres import find_test_server

    yield find_test_server(embedded_dir=tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
async def pg_template(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A migrated template database for this test run; dropped at the end."""
    name = f"cf_test_{os.getpid()}_{uuid.uuid4().hex[:6]}_tpl"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_db(pg_admin_dsn, name))
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_dsn(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh migrated database for one test (cloned from the template)."""
    name = f"cf_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        yield _with_db(pg_admin_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    # The embedded PostgreSQL's atexit hook logs after pytest has closed its capture streams;
    # a log call that cannot write must not print a "Logging error" traceback at exit.
    import logging

    logging.raiseExceptions = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tests/faults replaces the session's shared service (`fleet`, one Serve app per Ray) with
    # its own: every test that uses the shared one runs before them, whatever its folder's name.
    items.sort(key=lambda item: "/tests/faults/" in str(item.path))
