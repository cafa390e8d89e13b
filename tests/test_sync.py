"""hubmirror sync against a fake upstream Hub that injects faults. Every assertion is about
what a user sees: bytes the upstream served, what the mirror serves, what the client downloads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import current as backend
from fakes.hub import FakeHub
from helpers import Server, raw, run_client

from hubmirror.catalog import Catalog
from hubmirror.errors import (
    HubMirrorError,
    RepoNotFound,
    UpstreamError,
    UpstreamUnavailable,
)
from hubmirror.hub import HubClient
from hubmirror.model.mirror import MirrorSpec
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore
from hubmirror.sync.engine import Syncer, SyncResult


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=3).start()
    yield h
    h.stop()


def run_sync(data: Path, upstream: str, repo: str, *, revisions: tuple[str, ...] = ("main",), include: tuple[str, ...] = (),
             exclude: tuple[str, ...] = (), token: str | None = None, retries: int = 5,
             repo_type: str = "model") -> SyncResult:
    async def go() -> SyncResult:
        catalog = backend().catalog(data)
        store = backend().store(data)
        async with HubClient(upstream, token, max_retries=retries, backoff_base=0.01) as client:
            spec = MirrorSpec(repo=repo, type=RepoType(repo_type), revisions=list(revisions), include=list(include),
                              exclude=list(exclude))
            try:
                return await Syncer(catalog, store, client, data).sync(spec)
            finally:
                catalog.close()

    return asyncio.run(go())


def files_v1() -> dict[str, bytes]:
    return {
        "config.json": b'{"v": 1}\n',
        "README.md": b"# up\n",
        "model.safetensors": os.urandom(600_000),
        "tokenizer.json": os.urandom(50_000),
        "sub/a.txt": b"a" * 1000,
        "sub/b.bin": os.urandom(200_000),
    }


def served(server: Server, repo: str, path: str, rev: str = "main") -> bytes:
    r = raw(server.url, "GET", f"/{repo}/resolve/{rev}/{path}")
    assert r.status == 200, r
    return r.body


def blobs_are_sound(data: Path) -> None:
    """Every published blob hashes to its name: nothing corrupt was ever published."""
    store = backend().store(data)
    for sha in (b.sha256 for b in store.list()):
        assert hashlib.sha256(b"".join(store.read(sha))).hexdigest() == sha


@pytest.mark.e2e
def test_sync_then_clients_download_every_revision(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    c1 = hub.commit("acme/up", files)
    hub.tag("acme/up", "v1.0", c1)
    res = run_sync(tmp_path / "d", hub.url, "acme/up", revisions=("main", "v*"))
    assert res.status == "synced" and res.files_fetched == len(files)
    assert [(r.revision, r.commit) for r in res.revisions] == [("main", c1), ("v1.0", c1)]
    # tree pages of 3 were followed; LFS files came through the CDN redirect
    assert hub.file_bytes("acme/up") == sum(len(v) for v in files.values())
    s = Server(tmp_path / "d")
    try:
        out = run_client(
            """
            import hashlib
            from huggingface_hub import hf_hub_download, snapshot_download
            import os
            d = snapshot_download("acme/up")
            r = {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest() for p in FILES}
            r["tag"] = open(hf_hub_download("acme/up", "config.json", revision="v1.0")).read()
            out(r)
            """.replace("FILES", repr(sorted(files))),
            s.url, tmp_path / "hf",
        )
        assert "error" not in out, out
        for p, data in files.items():
            assert out[p] == hashlib.sha256(data).hexdigest()
        assert out["tag"] == '{"v": 1}\n'
        # Xet hints of the upstream never reach clients
        h = raw(s.url, "HEAD", "/acme/up/resolve/main/model.safetensors")
        assert not any(k.startswith("x-xet") for k in h.headers) and "xet" not in h.headers.get("link", "")
        assert "xetHash" not in raw(s.url, "GET", "/api/models/acme/up/tree/main?recursive=true").body.decode()
    finally:
        s.stop()


def test_incremental_sync_transfers_only_what_changed_and_keeps_old_commits(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    c1 = hub.commit("acme/up", files)
    run_sync(tmp_path / "d", hub.url, "acme/up")
    hub.reset_counters()
    again = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert again.status == "up-to-date" and again.files_fetched == 0
    assert hub.file_bytes("acme/up") == 0
    assert again.upstream_calls == 1  # one refs call is the whole check

    files2 = dict(files)
    files2["tokenizer.json"] = os.urandom(50_000)
    c2 = hub.commit("acme/up", files2)
    hub.reset_counters()
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res.status == "synced" and res.files_fetched == 1 and res.bytes_fetched == 50_000
    assert res.files_reused == len(files) - 1
    assert hub.file_bytes("acme/up") == 50_000 == hub.file_bytes("acme/up", "tokenizer.json")
    s = Server(tmp_path / "d")
    try:
        assert served(s, "acme/up", "tokenizer.json") == files2["tokenizer.json"]
        assert served(s, "acme/up", "tokenizer.json", rev=c1) == files["tokenizer.json"]  # old commit by sha
        assert raw(s.url, "HEAD", "/acme/up/resolve/main/config.json").headers["x-repo-commit"] == c2
    finally:
        s.stop()


def test_include_and_exclude(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/up", files_v1())
    res = run_sync(tmp_path / "d", hub.url, "acme/up", include=("*.json", "sub/*"), exclude=("*.bin",))
    assert res.files_fetched == 3  # config.json, tokenizer.json, sub/a.txt
    s = Server(tmp_path / "d")
    try:
        tree = raw(s.url, "GET", "/api/models/acme/up/tree/main?recursive=true").json()
        assert sorted(e["path"] for e in tree) == ["config.json", "sub", "sub/a.txt", "tokenizer.json"]
        assert raw(s.url, "GET", "/acme/up/resolve/main/sub/b.bin").headers["x-error-code"] == "EntryNotFound"
    finally:
        s.stop()


def test_429_with_retry_after_and_5xx_are_retried(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    hub.commit("acme/up", files)
    hub.fault("status", "/api/models/acme/up/refs", times=1, status=429,
              headers={"Retry-After": "1", "RateLimit": '"api";r=0;t=0'})
    hub.fault("status", "/api/models/acme/up/tree/*", times=2, status=503)
    hub.fault("status", "/acme/up/resolve/*/config.json", times=1, status=500)
    t0 = time.monotonic()
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res.status == "synced" and res.files_fetched == len(files)
    assert time.monotonic() - t0 >= 1.0  # RateLimit t=0 means wait t+1 seconds
    blobs_are_sound(tmp_path / "d")


def test_persistent_rate_limit_fails_clearly_and_publishes_nothing(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/up", files_v1())
    hub.fault("status", "/api/models/acme/up/refs", times=100, status=429, headers={"Retry-After": "0"})
    with pytest.raises(UpstreamUnavailable, match="rate limited"):
        run_sync(tmp_path / "d", hub.url, "acme/up", retries=2)
    cat = Catalog(f"sqlite:///{tmp_path / 'd' / 'catalog.sqlite3'}")
    assert cat.get_repo(RepoRef(RepoType.MODEL, "acme/up")) is None
    assert cat.runs(RepoRef(RepoType.MODEL, "acme/up"))[0]["status"] == "failed"


def test_body_cut_midway_resumes_with_range(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    hub.commit("acme/up", files)
    hub.fault("cut", "/blob/*", times=1, at=300_000)
    hub.fault("cut", "/acme/up/resolve/*/sub/a.txt", times=1, at=500)
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res.status == "synced"
    # resumed from where the body was cut, not restarted (from the resolve URL: CDN URLs expire)
    resumed = {path: rng for path, rng in hub.ranges}
    start = int(resumed["/blob/" + hashlib.sha256(files["model.safetensors"]).hexdigest()][6:].split("-")[0])
    assert 0 < start <= 300_000
    assert int(resumed["/acme/up/resolve/" + res.revisions[0].commit + "/sub/a.txt"][6:].split("-")[0]) > 0
    total = sum(len(v) for v in files.values())
    assert total <= hub.file_bytes("acme/up") < total + 300_000  # only bytes in flight at the cut are sent twice
    s = Server(tmp_path / "d")
    try:
        assert served(s, "acme/up", "model.safetensors") == files["model.safetensors"]
        assert served(s, "acme/up", "sub/a.txt") == files["sub/a.txt"]
    finally:
        s.stop()


def test_flipped_byte_is_never_published(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    hub.commit("acme/up", files)
    hub.fault("flip", "/blob/*", times=1, at=1234)  # LFS file via the CDN: caught by sha256
    hub.fault("flip", "/acme/up/resolve/*/config.json", times=1, at=3)  # regular file: caught by git sha1
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res.status == "synced"
    blobs_are_sound(tmp_path / "d")
    s = Server(tmp_path / "d")
    try:
        assert served(s, "acme/up", "config.json") == files["config.json"]
    finally:
        s.stop()
    # an upstream that keeps sending bad bytes: the sync fails and the mirror keeps the old snapshot
    files2 = dict(files)
    files2["config.json"] = b'{"v": 2}\n'
    hub.commit("acme/up", files2)
    hub.fault("flip", "/acme/up/resolve/*/config.json", times=100, at=3)
    with pytest.raises(HubMirrorError, match="verification"):
        run_sync(tmp_path / "d", hub.url, "acme/up")
    blobs_are_sound(tmp_path / "d")
    s = Server(tmp_path / "d")
    try:
        assert served(s, "acme/up", "config.json") == files["config.json"]
    finally:
        s.stop()


def test_slow_body_completes(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    hub.commit("acme/up", files)
    hub.fault("slow", "/blob/*", times=1, delay=0.02)
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res.status == "synced" and res.files_fetched == len(files)


def test_repo_deleted_upstream_keeps_serving(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    hub.commit("acme/up", files)
    run_sync(tmp_path / "d", hub.url, "acme/up")
    hub.delete_repo("acme/up")
    with pytest.raises(RepoNotFound):
        run_sync(tmp_path / "d", hub.url, "acme/up")
    s = Server(tmp_path / "d")
    try:
        assert served(s, "acme/up", "model.safetensors") == files["model.safetensors"]
    finally:
        s.stop()


def test_branch_moved_during_sync_gives_one_consistent_commit(hub: FakeHub, tmp_path: Path) -> None:
    files = files_v1()
    c1 = hub.commit("acme/up", files)
    files2 = {k: (v + b"-2" if k != "README.md" else v) for k, v in files.items()}
    moved: list[str] = []
    hub.fault("hook", "/acme/up/resolve/*", times=1, fn=lambda: moved.append(hub.commit("acme/up", files2)))
    res = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert moved and res.revisions[0].commit == c1
    s = Server(tmp_path / "d")
    try:
        for p, data in files.items():
            assert served(s, "acme/up", p) == data  # all of c1, none of the moved branch
    finally:
        s.stop()
    res2 = run_sync(tmp_path / "d", hub.url, "acme/up")
    assert res2.revisions[0].commit == moved[0]


def test_unsafe_upstream_paths_are_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/evil", {"../../escape.txt": b"x", "ok.txt": b"y"})
    with pytest.raises(UpstreamError, match="unsafe path"):
        run_sync(tmp_path / "d", hub.url, "acme/evil")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_upstream_token_goes_to_the_upstream_only(tmp_path: Path) -> None:
    hub = FakeHub(token="hf_secret_upstream_token").start()
    try:
        files = files_v1()
        hub.commit("acme/private", files)
        hub.repos[("model", "acme/private")].private = True
        with pytest.raises(RepoNotFound):
            run_sync(tmp_path / "d0", hub.url, "acme/private")  # no token: the Hub says not found
        hub.reset_counters()
        env = {**os.environ, "HUBMIRROR_UPSTREAM_TOKEN": "hf_secret_upstream_token"}
        cmd = [sys.executable, "-m", "hubmirror", "sync", "acme/private", "--data", str(tmp_path / "d"),
               "--upstream", hub.url]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        # private upstream content would be served to anyone: refused unless the operator opts in
        assert p.returncode == 1 and "private or gated" in p.stderr and "allow_gated" in p.stderr
        p = subprocess.run([*cmd, "--allow-gated"], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert "hf_secret_upstream_token" not in p.stdout + p.stderr
        cdn = [auth for origin, auth in hub.auth_seen if origin == hub.cdn_url]
        hub_auth = {auth for origin, auth in hub.auth_seen if origin == hub.url}
        assert cdn and all(a is None for a in cdn)
        assert hub_auth == {"Bearer hf_secret_upstream_token"}
    finally:
        hub.stop()


def test_cli_json_and_exit_codes(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/up", files_v1())
    hm = [sys.executable, "-m", "hubmirror", "sync", "--data", str(tmp_path / "d"), "--upstream", hub.url, "--json"]
    import json

    p = subprocess.run([*hm, "acme/up"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "synced"
    p = subprocess.run([*hm, "acme/up"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "up-to-date"
    p = subprocess.run([*hm, "acme/up", "--revision", "nope"], capture_output=True, text=True)
    assert p.returncode != 0 and "nope" in json.loads(p.stdout)["error"]
    p = subprocess.run([*hm, "acme/missing"], capture_output=True, text=True)
    assert p.returncode != 0 and json.loads(p.stdout)["status"] == "failed"
    p = subprocess.run([*hm[:-1], "bad..id"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid repo id" in p.stderr


@pytest.mark.e2e
def test_snapshot_download_during_a_sync_sees_one_snapshot(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"f{i}.bin": os.urandom(100_000) for i in range(6)}
    hub.commit("acme/up", files)
    run_sync(tmp_path / "d", hub.url, "acme/up")
    files2 = {k: os.urandom(100_000) for k in files}
    hub.commit("acme/up", files2)
    gate = threading.Event()
    hub.fault("hook", "/blob/*", times=1, fn=lambda: gate.wait(60))  # the sync stalls mid-fetch
    for i in range(6):
        hub.fault("slow", f"/blob/{hashlib.sha256(files2[f'f{i}.bin']).hexdigest()}", times=1, delay=0.1)
    s = Server(tmp_path / "d")
    errors: list[BaseException] = []
    sync_done = threading.Event()

    def sync() -> None:
        try:
            run_sync(tmp_path / "d", hub.url, "acme/up")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            sync_done.set()

    def snapshot(i: int) -> Any:
        return run_client(
            """
            import os, hashlib
            from huggingface_hub import snapshot_download
            d = snapshot_download("acme/up", cache_dir=os.path.join(os.environ["HF_HOME"], "c%d"))
            out({p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest() for p in sorted(os.listdir(d))})
            """ % i,
            s.url, tmp_path / "hf",
        )

    old = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    new = {k: hashlib.sha256(v).hexdigest() for k, v in files2.items()}
    t = threading.Thread(target=sync)
    try:
        t.start()
        deadline = time.monotonic() + 30
        while not any(p.startswith("/blob/") for _, p in list(hub.calls)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshot(0) == old  # mid-sync: the old snapshot, whole
        gate.set()
        i = 1
        while not sync_done.is_set():
            assert snapshot(i) in (old, new)
            i += 1
        t.join()
        assert not errors, errors
        assert snapshot(99) == new
    finally:
        gate.set()
        t.join()
        s.stop()


def test_kill_9_mid_sync_loses_nothing_and_the_rerun_resumes(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"f{i}.bin": os.urandom(200_000) for i in range(8)}
    hub.commit("acme/killed", files)
    data = tmp_path / "d"
    for i in range(4, 8):  # the last files trickle in, so the process dies with some published, some not
        hub.fault("slow", f"/blob/{hashlib.sha256(files[f'f{i}.bin']).hexdigest()}", times=1, delay=0.5)
    env = {**os.environ, "HUBMIRROR_SYNC_PARALLEL": "1", "HUBMIRROR_UPSTREAM_BACKOFF": "0.01"}
    p = subprocess.Popen([sys.executable, "-m", "hubmirror", "sync", "acme/killed", "--data", str(data),
                          "--upstream", hub.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = LocalBlobStore(data / "blobs")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len([b.sha256 for b in store.list()]) < 3:
        time.sleep(0.05)
    p.kill()
    p.wait()
    published = {b.sha256 for b in store.list()}
    assert 3 <= len(published) < 8
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    repo = cat.get_repo(RepoRef(RepoType.MODEL, "acme/killed"))
    assert repo is None or cat.refs(repo) == {}  # the ref never moved to a half-fetched commit
    cat.close()
    blobs_are_sound(data)
    time.sleep(1.5)  # the fake notices the dead connection of its slow response
    hub.reset_counters()
    rerun = subprocess.run([sys.executable, "-m", "hubmirror", "sync", "acme/killed", "--data", str(data),
                            "--upstream", hub.url, "--json"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    res = json.loads(rerun.stdout)
    assert res["status"] == "synced" and res["files_reused"] == len(published)
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    assert [r["status"] for r in cat.runs(RepoRef(RepoType.MODEL, "acme/killed"))] == ["synced", "interrupted"]
    cat.close()
    assert hub.file_bytes("acme/killed") == sum(len(files[f]) for f in files
                                                if hashlib.sha256(files[f]).hexdigest() not in published)
    assert list((data / "blobs" / "tmp").iterdir()) == []  # the killed run's partial file was swept
    blobs_are_sound(data)


def test_redirects_are_bounded_and_http_only(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/redir", {"a.txt": b"a"})
    hub.fault("redirect", "/acme/redir/resolve/*", times=100)  # a redirect loop onto itself
    with pytest.raises(UpstreamError, match="more than 5 redirects"):
        run_sync(tmp_path / "d", hub.url, "acme/redir")
    hub.faults.clear()
    hub.fault("redirect", "/acme/redir/resolve/*", times=1, location="file:///etc/passwd")
    with pytest.raises(UpstreamError, match="non-http"):
        run_sync(tmp_path / "d", hub.url, "acme/redir")
    hub.faults.clear()
    assert run_sync(tmp_path / "d", hub.url, "acme/redir").status == "synced"


def test_one_sync_per_repo_at_a_time(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    hub.commit("acme/busy", {"w.bin": data})
    gate = threading.Event()
    hub.fault("hook", "/blob/*", times=1, fn=lambda: gate.wait(30))
    first: list[Any] = []
    t = threading.Thread(target=lambda: first.append(run_sync(tmp_path / "d", hub.url, "acme/busy")))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not any(p.startswith("/blob/") for _, p in list(hub.calls)) and time.monotonic() < deadline:
            time.sleep(0.05)
        p = subprocess.run([sys.executable, "-m", "hubmirror", "sync", "acme/busy", "--data", str(tmp_path / "d"),
                            "--upstream", hub.url], capture_output=True, text=True)
        assert p.returncode == 1 and "already running" in p.stderr
    finally:
        gate.set()
        t.join()
    assert first[0].status == "synced"


def test_upstream_requests_in_flight_are_capped_and_counted(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"f{i}.bin": os.urandom(100_000) for i in range(8)}
    hub.commit("acme/cap", files)
    for name, data in files.items():
        hub.fault("slow", f"/blob/{hashlib.sha256(data).hexdigest()}", times=1, delay=0.05)

    async def go() -> tuple[int, Any]:
        catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
        catalog.migrate()
        async with HubClient(hub.url, max_concurrency=2, backoff_base=0.01) as client:
            syncer = Syncer(catalog, LocalBlobStore(tmp_path / "blobs"), client, tmp_path, parallel=8)
            res = await syncer.sync(MirrorSpec(repo="acme/cap"))
            return client.stats.calls, res

    calls, res = asyncio.run(go())
    assert res.files_fetched == 8
    assert hub.max_inflight <= 2  # 8 parallel fetches, but never more than 2 requests upstream at once
    assert calls == res.upstream_calls == len(hub.calls)  # every request sent is counted


def test_progress_bar_on_a_terminal_and_none_with_json(hub: FakeHub, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    hub.commit("acme/bar", files_v1())
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    cmd = [sys.executable, "-m", "hubmirror", "sync", "acme/bar", "--data", str(tmp_path / "d"), "--upstream", hub.url]
    p = subprocess.run(cmd, stderr=slave, stdout=subprocess.PIPE, text=True, timeout=120)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert p.returncode == 0
    text = screen.decode("utf-8", "replace")
    assert "sync acme/bar" in text, text[-500:]
    assert "files 6/6" in text and "100%" in text
    assert "B/s" in text  # speed (tqdm also shows the ETA while it runs)
    p = subprocess.run([*cmd, "--json", "--revision", "main"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "" and json.loads(p.stdout)["status"] == "up-to-date"
