"""Replicas: two `hubmirror serve` processes sharing one PostgreSQL catalog and one S3 bucket
(SeaweedFS), behind a round-robin load balancer, with the fake Hub as their upstream.

* 16 cold clients of one file, spread over both replicas, cost the upstream one download;
* a declared mirror with a schedule is synced once per interval, not once per replica;
* `kill -9` of the replica filling a blob: its clients retry through the load balancer and get
  the right bytes, the other replica takes over once the fill's lease lapses, and the bucket
  holds the blob once, whole, never half;
* `kill -9` of the replica running a sync: the other one finishes it, and the mirrored repo is
  consistent, every blob verified.

The load balancer is a TCP proxy in this process (`RoundRobin`): each client connection goes to
the next replica in turn; a replica that refuses the connection (dead) is skipped, as nginx's
`proxy_next_upstream error` does. It counts connections per replica, so a test can tell both
served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fakes.hub import FakeHub
from helpers import Server, raw, run_client
from services import S3Service

pytestmark = pytest.mark.e2e  # real clients, real servers; PostgreSQL + S3 whatever the --backend

HM = [sys.executable, "-m", "hubmirror"]

# A dead replica's leases (a fill, the scheduler) lapse this long after its last renewal (setting
# lease_ttl; renewed every third of it), so takeovers happen within seconds.
LEASE_TTL = 5.0
SCHEDULER_TICK = 0.2
SCHEDULER_LEASE_TTL = max(LEASE_TTL, 3 * SCHEDULER_TICK)  # sync/service.py

# Every replica: fast upstream retries, a quick scheduler, short leases, and S3's smallest multipart part, so
# that a blob of a few MiB is uploaded in parts while it is filled (a kill leaves an unfinished
# upload behind, which must stay invisible).
PART = 5 << 20
REPLICA_ENV = {
    "HUBMIRROR_UPSTREAM_BACKOFF": "0.01",
    "HUBMIRROR_SCHEDULER_TICK": str(SCHEDULER_TICK),
    "HUBMIRROR_LEASE_TTL": str(LEASE_TTL),
    "HUBMIRROR_S3__PART_SIZE": str(PART),
}


# -- the load balancer ----------------------------------------------------------------------------


class RoundRobin:
    """A TCP load balancer on a free loopback port, in a thread of its own."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.connections: Counter[int] = Counter()  # by backend index
        self.refused: Counter[int] = Counter()
        self._rr = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="round-robin", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the load balancer did not start")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.url: str = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self._loop.run_until_complete(start())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for t in asyncio.all_tasks(self._loop):  # connections still piping: cut them
                t.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        first = next(self._rr)
        for i in range(len(self.backends)):
            idx = (first + i) % len(self.backends)
            try:
                br, bw = await asyncio.wait_for(asyncio.open_connection(*self.backends[idx]), 3)
            except (OSError, TimeoutError):
                self.refused[idx] += 1
                continue
            self.connections[idx] += 1
            break
        else:
            cw.transport.abort()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
            except (OSError, ConnectionError):
                pass

        # whichever side ends first (a replica killed mid-body, a client gone) ends both: a cut
        # body reaches the client as a cut, never as a clean end
        tasks = [asyncio.ensure_future(pipe(cr, bw)), asyncio.ensure_future(pipe(br, cw))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        cw.transport.abort()
        bw.transport.abort()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# -- the cluster ----------------------------------------------------------------------------------


class Cluster:
    """Two replicas (data dirs of their own: spool and logs) on one database and one bucket prefix,
    and the load balancer in front. The second starts once the first answers (it created the
    schema), as deploy/compose.yaml does."""

    def __init__(self, tmp: Path, database_url: str, s3: S3Service, hub: FakeHub, config: str = "",
                 env: dict[str, str] | None = None, replicas: int = 2) -> None:
        self.tmp = tmp
        self.s3 = s3
        self.hub = hub
        self.database_url = database_url
        self.prefix = f"replicas-{tmp.name}-{secrets.token_hex(3)}"
        self.config = tmp / "hubmirror.toml"
        self.config.write_text(f'upstream = "{hub.url}"\n{config}')
        self.env = {**REPLICA_ENV, **s3.server_env(self.prefix), "HUBMIRROR_DATABASE_URL": database_url,
                    **(env or {})}
        self.replicas: list[Server] = []
        try:
            for i in range(replicas):
                self.replicas.append(Server(tmp / f"r{i}", "--config", str(self.config), env=self.env))
        except BaseException:
            self.stop()
            raise
        self.lb = RoundRobin([("127.0.0.1", r.port) for r in self.replicas])

    @property
    def url(self) -> str:
        return self.lb.url

    def kill(self, i: int) -> None:
        """kill -9: no cleanup of any kind (leases, uploads, spool files, database sessions)."""
        os.kill(self.replicas[i].proc.pid, signal.SIGKILL)
        self.replicas[i].proc.wait(10)

    def metric(self, i: int, name: str) -> float:
        """The sum of a metric's samples on replica i (asked directly, not through the balancer);
        NaN if it cannot tell (for messages only)."""
        try:
            with urllib.request.urlopen(self.replicas[i].url + "/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return float("nan")
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", line)
            if m:
                total += float(m.group(1))
        return total

    def leases(self) -> list[tuple[str, str, float]]:
        """(name, holder, seconds left) of the coordination leases (for diagnostics)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as c:
                rows = c.execute(sa.text(
                    "SELECT name, holder, EXTRACT(EPOCH FROM expires_at - now()) FROM hubmirror_leases")).all()
            return [(str(n), str(h), float(s)) for n, h, s in rows]
        except sa.exc.ProgrammingError:
            return []
        finally:
            engine.dispose()

    def holders(self, prefix: str) -> list[int]:
        """The replicas holding a live lease whose name starts with `prefix` ("fill:", "scheduler"),
        known by the pid in the lease's holder (coord/sql.py: host:pid:random)."""
        pids = {r.proc.pid: i for i, r in enumerate(self.replicas)}
        found = set()
        for name, holder, left in self.leases():
            parts = holder.split(":")
            if name.startswith(prefix) and left > 0 and len(parts) >= 2 and parts[1].isdigit() \
                    and int(parts[1]) in pids:
                found.add(pids[int(parts[1])])
        return sorted(found)

    def diagnose(self, repo_id: str) -> str:
        """What the catalog and the coordination tables say about a mirror (for failure messages)."""
        try:
            mirror = self.sql("SELECT next_run_at, last_check_at, last_sync_at, last_error FROM mirrors "
                              "WHERE repo_id = :r", r=repo_id)
            runs = self.sql("SELECT trigger, status, error, started_at, finished_at FROM sync_runs "
                            "WHERE repo_id = :r ORDER BY id", r=repo_id)
            locks = self.sql("SELECT l.locktype, l.objid, l.granted, a.pid, a.state, a.backend_start "
                             "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'")
        except Exception as e:  # noqa: BLE001 - diagnostics only
            return f"(no diagnostics: {e})"
        return f"mirror {mirror}; runs {runs}; advisory locks {locks}; leases {self.leases()}; now {time.time()}"

    def sql(self, query: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as c:
                return list(c.execute(sa.text(query), params).all())
        finally:
            engine.dispose()

    def objects(self) -> dict[str, int]:
        """Every object under this cluster's prefix in the bucket: key -> size."""
        out: dict[str, int] = {}
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket,
                                                                            Prefix=self.prefix + "/")
        for page in pages:
            for obj in page.get("Contents", ()):
                out[obj["Key"]] = int(obj["Size"])
        return out

    def blob_key(self, sha256: str) -> str:
        return f"{self.prefix}/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def object_sha256(self, key: str) -> str:
        body = self.s3.client().get_object(Bucket=self.s3.bucket, Key=key)["Body"]
        h = hashlib.sha256()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()

    def unfinished_uploads(self) -> int:
        r = self.s3.client().list_multipart_uploads(Bucket=self.s3.bucket, Prefix=self.prefix + "/")
        return len(r.get("Uploads", ()))

    def logs(self) -> str:
        return "\n".join(f"--- replica {i} (pid {r.proc.pid}) ---\n{r.log.read_text(errors='replace')[-4000:]}"
                         for i, r in enumerate(self.replicas))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A hubmirror command on the cluster's catalog and bucket (a data dir of its own)."""
        return subprocess.run([*HM, "--config", str(self.config), args[0], "--data", str(self.tmp / "cli"), *args[1:]],
                              check=False, capture_output=True, text=True, env={**os.environ, **self.env},
                              timeout=120)

    def status(self) -> list[dict[str, Any]]:
        p = self.cli("status", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if hasattr(self, "lb"):
            self.lb.stop()
        for r in self.replicas:
            r.stop()
        try:  # leave nothing in the bucket (it may be a server that outlives the session)
            s3 = self.s3.client()
            for up in s3.list_multipart_uploads(Bucket=self.s3.bucket, Prefix=self.prefix + "/").get("Uploads", ()):
                s3.abort_multipart_upload(Bucket=self.s3.bucket, Key=up["Key"], UploadId=up["UploadId"])
            for key in self.objects():
                s3.delete_object(Bucket=self.s3.bucket, Key=key)
        except Exception as e:  # noqa: BLE001 - cleanup only
            print(f"could not empty s3://{self.s3.bucket}/{self.prefix}: {e}")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


@pytest.fixture
def cluster(tmp_path: Path, postgres_database: str, s3_service: S3Service,
            hub: FakeHub) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(config: str = "", env: dict[str, str] | None = None, replicas: int = 2) -> Cluster:
        c = Cluster(tmp_path, postgres_database, s3_service, hub, config, env, replicas)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


# -- clients --------------------------------------------------------------------------------------


def get_raw_body(url: str, path: str, headers: dict[str, str] | None = None,
                 timeout: float = 60) -> tuple[int, bytes, bool]:
    """GET and read the body; (status, body, complete), without raising on a cut."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        try:
            return r.status, r.read(), True
        except http.client.IncompleteRead as e:
            return r.status, e.partial, False
    except (OSError, http.client.HTTPException):
        return 0, b"", False
    finally:
        conn.close()


def download_with_retries(url: str, path: str, size: int, deadline: float, *,
                          resume: bool) -> tuple[bytes, list[str]]:
    """A client that retries what failed (a cut, an error answer): resuming with Range from what
    it has, or starting again. (body, what each attempt got: "200", "206", "200 cut", "503"...)."""
    got = b""
    seen: list[str] = []
    while time.monotonic() < deadline:
        headers = {"Range": f"bytes={len(got)}-"} if resume and got else {}
        status, body, complete = get_raw_body(url, path, headers)
        seen.append(f"{status}{'' if complete else ' cut'}")
        if status == 206 and headers:
            got += body
        elif status == 200:
            got = body
        else:
            time.sleep(0.3)  # refused, or an error answer: ask again shortly
            continue
        if complete and len(got) == size:
            return got, seen
        if not resume:
            got = b""
        time.sleep(0.1)
    return got, seen


HF_DOWNLOAD = """
    import hashlib, os, time
    from pathlib import Path
    from huggingface_hub import hf_hub_download
    Path(os.environ["READY"]).touch()
    while not Path(os.environ["GO"]).exists():
        time.sleep(0.02)
    errors = []
    for attempt in range(6):  # a user runs it again when a download fails
        try:
            p = hf_hub_download(REPO, FILE, cache_dir=os.path.join(os.environ["HF_HOME"], "cache"))
            out({"sha256": hashlib.sha256(open(p, "rb").read()).hexdigest(), "errors": errors})
            break
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}"[:300])
            time.sleep(1)
    else:
        out({"error": "gave up", "errors": errors})
"""


def start_hf_clients(n: int, endpoint: str, repo: str, filename: str, tmp: Path,
                     pool: concurrent.futures.Executor) -> tuple[list[concurrent.futures.Future[Any]], Path]:
    """n hf_hub_download subprocesses, each with a cache of its own; they import and then wait
    for the returned go-file (so that they start together with the other clients)."""
    go = tmp / "go"
    futures = []
    for i in range(n):
        home = tmp / f"hf{i}"
        home.mkdir(parents=True)
        code = HF_DOWNLOAD.replace("REPO", repr(repo)).replace("FILE", repr(filename))
        futures.append(pool.submit(run_client, code, endpoint, home,
                                   env={"READY": str(tmp / f"ready{i}"), "GO": str(go),
                                        "HF_HUB_DOWNLOAD_TIMEOUT": "60", "HF_HUB_ETAG_TIMEOUT": "30"},
                                   timeout=150))
    deadline = time.monotonic() + 60
    while not all((tmp / f"ready{i}").exists() for i in range(n)):
        if time.monotonic() > deadline or any(f.done() for f in futures):
            raise AssertionError(f"hf clients did not get ready: {[f.result() for f in futures if f.done()]}")
        time.sleep(0.05)
    return futures, go


def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition", step: float = 0.1) -> float:
    """Seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"{what}: not met within {timeout:.0f} s")


# -- 1. sixteen cold clients over two replicas --------------------------------------------------


def test_sixteen_cold_clients_over_two_replicas_cause_one_upstream_download(
        cluster: Callable[..., Cluster], hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(16 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    hub.commit("acme/big", {"model.safetensors": data, "config.json": b"{}"})
    # keep the one fill in flight (~4 s) while every client joins, on either replica
    hub.fault("slow", "/blob/*", times=1, delay=0.015)
    c = cluster()
    path = "/acme/big/resolve/main/model.safetensors"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        hf, go = start_hf_clients(4, c.url, "acme/big", "model.safetensors", tmp_path / "clients", pool)
        c.lb.connections.clear()
        reqs: list[tuple[dict[str, str], bytes]] = (
            [({}, data)] * 8 + [({"Range": "bytes=1000-1999"}, data[1000:2000])] * 2
            + [({"Range": f"bytes={len(data) - 10}-"}, data[-10:])] * 2)
        go.touch()
        plain = [pool.submit(get_raw_body, c.url, path, h) for h, _ in reqs]
        results = [f.result() for f in plain]
        hf_results = [f.result() for f in hf]
    for (hdrs, want), (status, body, complete) in zip(reqs, results, strict=True):
        assert status in (200, 206) and complete and body == want, (hdrs, status, len(body), c.logs())
    for res in hf_results:
        assert res.get("sha256") == sha and res["errors"] == [], res  # at the first try
    # the clients came through both replicas
    assert all(c.lb.connections[i] > 0 for i in range(2)), c.lb.connections
    served = hub.file_bytes("acme/big", "model.safetensors")
    assert served <= 1.05 * len(data), (
        f"the upstream served {served / len(data):.2f}x the file's size for 16 clients over two replicas "
        f"(fills by replica: {[c.metric(i, 'hubmirror_fill_bytes_total') for i in range(2)]})")
    # published once, whole, under its sha256, and nothing else in the bucket
    assert c.objects() == {c.blob_key(sha): len(data)}
    # warm: both replicas serve it from the bucket, the upstream is not asked for a byte
    hub.reset_counters()
    for r in c.replicas:
        assert get_raw_body(r.url, path) == (200, data, True)
    assert hub.file_bytes("acme/big") == 0


# -- 2. one scheduler for two replicas ------------------------------------------------------------


def test_scheduled_mirrors_are_synced_once_per_interval_not_once_per_replica(
        cluster: Callable[..., Cluster], hub: FakeHub) -> None:
    """Five mirrors every 10 s for three intervals. Both replicas tick every 50 ms: were they both
    firing schedules, two checks of one mirror would meet now and then (a tick reads the mirror
    due before the other's run moved it on), and each meeting shows as a double check."""
    interval = 10  # the shortest schedule allowed (plus up to 1 s of jitter)
    repos = [f"acme/sched{i}" for i in range(5)]
    for repo in repos:
        hub.commit(repo, {"config.json": b'{"v": 0}', "w.bin": os.urandom(20_000)})
    calls: dict[str, list[float]] = {r: [] for r in repos}  # when each upstream refs call was seen
    stop = threading.Event()

    def watch() -> None:  # a check asks the upstream for the refs once, and its sync once more
        seen: Counter[str] = Counter()
        while not stop.wait(0.02):
            now = Counter(p.split("?")[0] for _, p in list(hub.calls))
            for r in repos:
                n = now[f"/api/models/{r}/refs"]
                calls[r].extend([time.monotonic()] * (n - seen[r]))
                seen[r] = n

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    c = cluster("".join(f'[[mirrors]]\nrepo = "{r}"\nschedule = "{interval}s"\n' for r in repos),
                env={"HUBMIRROR_SCHEDULER_TICK": "0.05"})

    def runs() -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {r: [] for r in repos}
        for row in c.sql("SELECT repo_id, trigger, status, EXTRACT(EPOCH FROM started_at) FROM sync_runs "
                         "ORDER BY id"):
            out[row[0]].append(row[1:])
        return out

    try:
        wait_for(lambda: all(any(r[1] == "synced" for r in v) for v in runs().values()), 30, "the first syncs")
        # for three intervals, the upstream moves after every sync: every scheduled check finds its
        # mirror behind and syncs, on one replica or the other, never on both
        t0 = time.monotonic()
        first = {r: len(v) for r, v in runs().items()}
        done = {r: n - 1 for r, n in first.items()}  # the upstream moves at once, then after every sync
        version = 0
        while time.monotonic() - t0 < 3 * (interval + 1) + 1:
            for r, v in runs().items():
                n = len([x for x in v if x[1] != "running"])
                if n > done[r]:
                    done[r] = n
                    version += 1
                    hub.commit(r, {"config.json": json.dumps({"v": version}).encode(), "w.bin": os.urandom(20_000)})
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join()
    later = {r: v[first[r]:] for r, v in runs().items()}
    problems, details = [], []
    for r in repos:
        episodes: list[list[float]] = []  # refs calls less than 3 s apart: one check (and its sync)
        for t in (t for t in calls[r] if t > t0):
            if episodes and t - episodes[-1][-1] < 3:
                episodes[-1].append(t)
            else:
                episodes.append([t])
        gaps = [round(b[0] - a[0], 1) for a, b in itertools.pairwise(episodes)]
        run_gaps = [round(float(b[2]) - float(a[2]), 1) for a, b in itertools.pairwise(later[r])]
        details.append(f"{r}: checks of {[len(e) for e in episodes]} refs calls, {gaps} s apart; runs "
                       f"{[(x[0], x[1]) for x in later[r]]}, {run_gaps} s apart")
        if any(len(e) > 2 for e in episodes):
            problems.append(f"{r}: two checks at once")
        if any(g < interval * 0.8 for g in gaps + run_gaps):
            problems.append(f"{r}: two checks or syncs in one interval")
        if not 3 <= len(episodes) <= 4 or len(later[r]) != len(episodes):
            problems.append(f"{r}: {len(episodes)} checks and {len(later[r])} syncs in three intervals")
        if not all(x[0] == "schedule" and x[1] == "synced" for x in later[r]):
            problems.append(f"{r}: a run that is not a scheduled sync")
    assert not problems, "; ".join(problems) + "\n" + "\n".join(details)
    assert all(m["last_error"] is None for m in c.status())


# -- 3. a replica killed mid-fill -----------------------------------------------------------------


def test_kill_9_of_the_filling_replica_its_clients_retry_and_the_other_takes_over(
        cluster: Callable[..., Cluster], hub: FakeHub, tmp_path: Path) -> None:
    size = 12 * 1024 * 1024 + 5  # two full parts and a bit
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    hub.commit("acme/killed", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.04)  # the first fill takes ~8 s; a takeover is fast
    c = cluster()
    key = c.blob_key(sha)
    path = "/acme/killed/resolve/main/model.safetensors"

    half: list[tuple[str, int]] = []  # anything seen in the bucket that is not the whole blob
    stop_watch = threading.Event()

    def watch_bucket() -> None:
        while not stop_watch.wait(0.1):
            for k, n in c.objects().items():
                if k != key or n != size:
                    half.append((k, n))

    watcher = threading.Thread(target=watch_bucket, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 90
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        hf, go = start_hf_clients(2, c.url, "acme/killed", "model.safetensors", tmp_path / "clients", pool)
        go.touch()
        plain = [pool.submit(download_with_retries, c.url, path, size, deadline, resume=i % 2 == 0)
                 for i in range(6)]
        # kill the replica that fills, halfway (its first part is up, or on its way)
        wait_for(lambda: hub.file_bytes("acme/killed") >= size // 2, 30, "half the fill")
        filling = c.holders("fill:")
        assert len(filling) == 1, f"replicas holding the fill's lease: {filling}; leases {c.leases()}"
        victim = filling[0]
        c.kill(victim)
        killed_at = time.monotonic()
        upstream_at_kill = hub.file_bytes("acme/killed")
        results = [f.result() for f in plain]
        done_at = time.monotonic()
        hf_results = [f.result() for f in hf]
    stop_watch.set()
    watcher.join()
    for body, attempts in results:
        assert hashlib.sha256(body).hexdigest() == sha, (len(body), attempts, c.logs())
    for res in hf_results:
        assert res.get("sha256") == sha, res
    # some were cut mid-body by the kill, and the balancer sent their retries to the survivor
    assert any(a[0].endswith("cut") for _, a in results), [a for _, a in results]
    assert c.lb.refused[victim] > 0, c.lb.refused
    took = done_at - killed_at
    assert took <= LEASE_TTL + 10, f"the survivor took {took:.1f} s to serve every client after the kill"
    # the survivor downloaded it once more, whole; nobody else did
    assert hub.file_bytes("acme/killed") <= upstream_at_kill + 1.05 * size, (hub.file_bytes("acme/killed"),
                                                                              upstream_at_kill)
    # published once, with the right sha256, never half, nothing else
    assert half == [], half[:10]
    assert c.objects() == {key: size}
    assert c.object_sha256(key) == sha
    survivor = c.replicas[1 - victim]
    assert get_raw_body(survivor.url, path) == (200, data, True)
    print(f"\nkill -9 mid-fill: every client done {took:.1f} s after the kill (lease ttl {LEASE_TTL} s); "
          f"unfinished multipart uploads left by the dead replica: {c.unfinished_uploads()}; "
          f"plain clients' attempts {[a for _, a in results]}; hf clients' failed tries "
          f"{[[e[:90] for e in r.get('errors', [])] for r in hf_results]}")
    # A client waiting on the survivor (for the dead replica's fill) is served by the survivor's
    # takeover in the same request: no error answer. Only a resume onto bytes the dead replica sent
    # unverified may be refused (409) until they can be proved.
    errors = [a for _, a in results if any(x not in ("200", "206", "409") and not x.endswith("cut") for x in a)]
    assert not errors, f"error answers from the surviving replica: {errors}"


# -- 4. a replica killed mid-sync -----------------------------------------------------------------


def test_kill_9_of_the_syncing_replica_the_other_finishes_the_sync(
        cluster: Callable[..., Cluster], hub: FakeHub) -> None:
    files = {f"w{i}.bin": os.urandom(8 * 1024 * 1024) for i in range(3)}
    files.update({"config.json": b'{"v": 1}', "README.md": b"# synced\n", "sub/notes.txt": b"notes\n" * 100})
    commit = hub.commit("acme/synced", files)
    for _ in range(3):  # the first sync is slow (three files of ~6 s in parallel); a retry is fast
        hub.fault("slow", "/blob/*", times=1, delay=0.05)
    c = cluster('webhook_secret = "s3cret"\n[[mirrors]]\nrepo = "acme/synced"\nschedule = "1h"\n')

    def lfs_bytes() -> int:
        return sum(hub.file_bytes("acme/synced", p) for p in files if p.endswith(".bin"))

    wait_for(lambda: lfs_bytes() >= 9 * 1024 * 1024, 30, "the sync under way (parts going up)")
    syncing = c.holders("scheduler")  # the replica that fires the schedules runs the sync
    assert len(syncing) == 1, f"replicas firing schedules: {syncing}; leases {c.leases()}"
    victim = syncing[0]
    c.kill(victim)
    killed_at = time.monotonic()

    def synced() -> bool:
        return bool(c.sql("SELECT 1 FROM sync_runs WHERE repo_id = 'acme/synced' AND status = 'synced'"))

    assert not synced(), f"the kill came too late: the sync was over ({lfs_bytes()} bytes fetched)"

    by_scheduler = True
    try:  # the survivor's scheduler takes the lease once the dead one's lapsed, and may run it again
        wait_for(synced, SCHEDULER_LEASE_TTL + 6, "the survivor's scheduler finishing the sync")
    except AssertionError:
        by_scheduler = False  # else a retry: a webhook through the balancer, which only the survivor gets
        before = c.status()[0]
        r = raw(c.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "s3cret"},
                json.dumps({"event": {"scope": "repo.content"},
                            "repo": {"type": "model", "name": "acme/synced"}}).encode())
        assert r.status == 202, r
        try:
            wait_for(synced, 30, "the sync retried by a webhook")
        except AssertionError as e:
            raise AssertionError(f"{e}; {c.diagnose('acme/synced')}\n{c.logs()}") from None
    took = time.monotonic() - killed_at
    runs = c.sql("SELECT trigger, status, error FROM sync_runs WHERE repo_id = 'acme/synced' ORDER BY id")
    # consistent: the ref is the upstream commit, every file reads back right through the balancer
    st = c.status()[0]
    assert st["state"]["main"] == {"mirrored": commit, "upstream": commit, "up_to_date": True}, st
    for p, want in files.items():
        status, body, complete = get_raw_body(c.url, f"/acme/synced/resolve/main/{p}")
        assert (status, complete) == (200, True) and body == want, (p, status, len(body))
    # every blob in the bucket once, verified; nothing half, nothing else
    want_keys = {c.blob_key(hashlib.sha256(d).hexdigest()): len(d) for d in files.values()}
    got = c.objects()
    assert got == want_keys, (sorted(set(got) - set(want_keys)), sorted(set(want_keys) - set(got)))
    for k in got:
        assert c.object_sha256(k) == k.rsplit("/", 1)[-1], k
    scrub = c.cli("scrub", "--no-repair", "--rate", "0", "--json")  # the catalog agrees with the bucket
    assert scrub.returncode == 0, scrub.stdout + scrub.stderr
    report = json.loads(scrub.stdout)
    assert report["checked"] == len(files) and not report["corrupt"] and not report["size_mismatch"], report
    assert [r[1] for r in runs].count("synced") == 1, runs
    assert "running" not in [r[1] for r in runs], runs  # the dead replica's run was closed
    how = "its scheduler" if by_scheduler else "a webhook retry (its scheduler did not run it again)"
    print(f"\nkill -9 mid-sync: the survivor synced {took:.1f} s after the kill, by {how}; runs {runs}; "
          f"unfinished multipart uploads left: {c.unfinished_uploads()}")
    if not by_scheduler:
        m = c.sql("SELECT EXTRACT(EPOCH FROM next_run_at - now()) FROM mirrors WHERE repo_id = 'acme/synced'")
        warnings.warn(f"kill -9 mid-sync: the survivor's scheduler did not run the interrupted sync again within "
                      f"{SCHEDULER_LEASE_TTL + 6:.0f} s (the mirror's next run was {float(m[0][0]):.0f} s away; "
                      f"status said state {before['state']}, last_error {before['last_error']!r}); a retry did",
                      stacklevel=1)
