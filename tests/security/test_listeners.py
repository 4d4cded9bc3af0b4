"""CONTRACT §7.9: started as `make run` starts it (no SERVICE_HOST), nothing the service starts
listens beyond loopback unless Ray's token authentication guards it; and a SIGTERM to the
whole process group (what systemd and most supervisors send) leaves, within 30 s, no process
and no port behind.

One start for both (Ray's start costs ~10 s here): the census, then the stop."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support import service_process as sp

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

#: A method of the gRPC server each Serve replica opens on every interface (its handler
#: unpickles request metadata, so only Ray's token stands before it).
REPLICA_METHOD = "/ray.serve.ASGIService/HandleRequest"


def is_ray(command: str) -> bool:
    return command.startswith("ray::") or "/site-packages/ray/" in command


def grpc_code(port: int, token: str | None) -> grpc.StatusCode:
    """The status of one call of REPLICA_METHOD on 127.0.0.1:`port` with an empty body."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            REPLICA_METHOD, request_serializer=None, response_deserializer=None
        )
        try:
            call(b"", timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def service(tmp_path: Path, pg_admin_dsn: str) -> Iterator[sp.Service]:
    from comfy_fleet_devstack import postgres

    if not pg_admin_dsn.startswith("postgresql://") or "@/" in pg_admin_dsn:
        pytest.skip("needs a PostgreSQL over TCP (CI's on 127.0.0.1:5432)")
    name = postgres.unique_database_name("doors")
    dsn = asyncio.run(postgres.create_database(pg_admin_dsn, name))
    svc = sp.Service(tmp_path / "data", sp.free_port(), env={"DATABASE_URL": dsn})
    try:
        yield svc.start()
    finally:
        svc.kill_everything()
        asyncio.run(postgres.drop_database(pg_admin_dsn, name))


def test_listeners_are_loopback_or_token_guarded_and_a_group_sigterm_leaves_nothing(
    service: sp.Service,
) -> None:
    service.wait_started()
    snapshot = sp.processes(service)
    commands = {pid: sp.cmdline(pid) for pid in snapshot}
    assert any("haproxy" in c for c in commands.values()), "HAProxy is not among the processes"
    assert any("raylet" in c for c in commands.values())
    assert any("gcs_server" in c for c in commands.values())
    census = sp.listeners(list(snapshot))
    assert any(l.port == service.port and l.loopback for l in census), census

    # Every listener not on loopback is Ray's, and Ray refuses a call without the token.
    token_file = service.data / "ray_auth_token"
    assert token_file.stat().st_mode & 0o077 == 0, "the token file is readable by others"
    token = token_file.read_text().strip()
    open_doors = [l for l in census if not l.loopback]
    for door in open_doors:
        assert is_ray(door.command), f"{door.command} listens on {door.address}:{door.port}"
        assert grpc_code(door.port, None) == grpc.StatusCode.UNAUTHENTICATED, door
        assert grpc_code(door.port, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED, door
        # the refusal is the token check: with Ray's token the call gets past it
        assert grpc_code(door.port, token) != grpc.StatusCode.UNAUTHENTICATED, door
    assert token not in service.output()  # never printed whole

    # HAProxy's stats page and exporter are on loopback (census above), and it bounds the
    # time a client has to send its request head.
    # Ray rewrites the file on a reload (a replica added or moved) and the guard hardens it as
    # the new HAProxy starts: read it once no reload is under way (the census above already
    # shows the running HAProxy's own listeners).
    haproxy = next(c for c in commands.values() if "haproxy" in c and " -f " in f" {c} ")
    config_path = Path(re.search(r" -f (\S+)", haproxy).group(1))  # type: ignore[union-attr]
    for _ in range(100):
        config = config_path.read_text()
        if re.search(r"^\s*timeout http-request \d+s$", config, re.M):
            break
        time.sleep(0.1)
    assert re.search(r"^\s*timeout http-request \d+s$", config, re.M), config

    service.signal_group(signal.SIGTERM)
    left = sp.wait_stopped(service, snapshot, timeout=30)
    tail = service.output()[-3000:]
    assert left == {}, f"still running 30 s after SIGTERM to the group: {left}\n{tail}"
