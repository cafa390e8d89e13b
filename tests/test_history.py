"""Versions that never drift and models that outlive their upstream: pins, locks, verify,
retention and gc, bundles, HF-cache export, purge, scrub, re-pointed tags, gone repos."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import current as backend
from conftest import Fixture, minilm_folder
from fakes.hub import FakeHub
from helpers import Server, hubmirror_env, raw, run_client

from hubmirror.catalog import Catalog
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore


def hm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`hubmirror ARGS`; with `--data DIR`, on the session's backend for DIR (helpers.hubmirror_env)."""
    env = {"HUBMIRROR_UPSTREAM_BACKOFF": "0.01", **(env or {})}
    data = Path(args[args.index("--data") + 1]) if "--data" in args else None
    return subprocess.run([sys.executable, "-m", "hubmirror", *args], capture_output=True, text=True,
                          env=hubmirror_env(data, env) if data else {**os.environ, **env}, timeout=300)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


def sound_and_complete(data: Path) -> None:
    """Every blob hashes to its name, and every file of every recorded commit has its blob."""
    store = backend().store(data)
    for sha in (b.sha256 for b in store.list()):
        assert hashlib.sha256(b"".join(store.read(sha))).hexdigest() == sha
    cat = backend().catalog(data)
    try:
        for repo_pk, _origin, commit in cat.all_commits():
            repo = cat._repo_by_pk(repo_pk)
            for e in cat.list_entries(repo, commit, recursive=True, files_only=True):
                if repo.origin != "proxy":
                    assert e.sha256 and store.stat(e.sha256) is not None, (repo.ref, commit, e.path)
    finally:
        cat.close()


@pytest.mark.e2e
def test_pinned_revision_downloads_after_upstream_moved_and_deleted_the_repo(hub: FakeHub, tmp_path: Path) -> None:
    v1 = {"config.json": b'{"v": 1}', "model.safetensors": os.urandom(300_000), "tok.json": b"tok"}
    c1 = hub.commit("acme/pinme", v1)
    data = tmp_path / "d"
    s = Server(data, "--upstream", hub.url, env={"HUBMIRROR_UPSTREAM_BACKOFF": "0.01"})
    try:
        # pulled through: only config.json was ever downloaded
        assert raw(s.url, "GET", "/acme/pinme/resolve/main/config.json").status == 200
        p = hm("pin", "acme/pinme@main", "--note", "prod model", "--data", str(data), "--upstream", hub.url)
        assert p.returncode == 0, p.stderr
        assert c1 in p.stdout and "fetched 2 missing files" in p.stdout
        pins = json.loads(hm("pins", "--json", "--data", str(data)).stdout)
        assert pins[0]["commit"] == c1 and pins[0]["note"] == "prod model"
        hub.commit("acme/pinme", {"config.json": b'{"v": 2}'})  # upstream moves main...
        hub.delete_repo("acme/pinme")  # ...then deletes the repo
        p = hm("gc", "--data", str(data), "--json")
        assert p.returncode == 0, p.stderr
        out = run_client(
            """
            import os, hashlib
            from huggingface_hub import snapshot_download
            d = snapshot_download("acme/pinme", revision=COMMIT)
            out({p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest() for p in sorted(os.listdir(d))})
            """.replace("COMMIT", repr(c1)),
            s.url, tmp_path / "hf",
        )
        assert out == {k: hashlib.sha256(v).hexdigest() for k, v in v1.items()}
    finally:
        s.stop()
    p = hm("unpin", "acme/pinme@main", "--data", str(data))
    assert p.returncode == 0 and c1 in p.stdout
    p = hm("unpin", "acme/pinme@main", "--data", str(data))
    assert p.returncode == 1 and "not pinned" in p.stderr


def test_mirror_gone_upstream_keeps_serving_and_shows_in_status_and_metrics(hub: FakeHub, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "w.bin": os.urandom(1000)}
    hub.commit("acme/gone", files)
    data = tmp_path / "d"
    assert hm("sync", "acme/gone", "--data", str(data), "--upstream", hub.url).returncode == 0
    assert hm("mirror", "add", "acme/gone", "--data", str(data)).returncode == 0
    hub.delete_repo("acme/gone")
    p = hm("sync", "acme/gone", "--data", str(data), "--upstream", hub.url)
    assert p.returncode == 1 and "gone upstream" in p.stderr
    st = json.loads(hm("status", "--data", str(data), "--json").stdout)[0]
    assert st["gone_upstream_since"].endswith("Z")
    assert "GONE UPSTREAM" in hm("status", "--data", str(data)).stdout
    s = Server(data, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/gone/resolve/main/w.bin").body == files["w.bin"]
        metrics = raw(s.url, "GET", "/metrics").body.decode()
        assert 'hubmirror_repo_gone_upstream_since_seconds{repo_id="acme/gone",repo_type="model"}' in metrics
    finally:
        s.stop()


@pytest.mark.e2e
def test_lock_and_verify_catch_a_single_changed_byte(server: Server, fixture_data: Fixture, tmp_path: Path) -> None:
    lock = tmp_path / "hub.lock"
    p = hm("lock", "acme/tiny@main", "datasets/acme/ds@main", "--data", str(fixture_data.data), "-o", str(lock))
    assert p.returncode == 0, p.stderr
    text = lock.read_text()
    assert 'repo_id = "acme/tiny"' in text and 'repo_type = "dataset"' in text and fixture_data.commits["main"] in text
    assert hashlib.sha256(fixture_data.files["weights.bin"]).hexdigest() in text
    out = run_client(
        """
        import os
        from huggingface_hub import snapshot_download
        d = snapshot_download("acme/tiny", local_dir=os.path.join(os.environ["HF_HOME"], "local"))
        c = snapshot_download("acme/tiny")
        snapshot_download("acme/ds", repo_type="dataset")
        out({"local": d, "cache": os.path.join(os.environ["HF_HOME"], "hub")})
        """,
        server.url, tmp_path / "hf",
    )
    local, cache = Path(out["local"]), Path(out["cache"])
    ok = hm("verify", "--lock", str(lock), "--repo", "acme/tiny", str(local))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    assert hm("verify", "--lock", str(lock), "--hf-cache", str(cache)).returncode == 0
    # one flipped byte
    w = local / "weights.bin"
    b = bytearray(w.read_bytes())
    b[12345] ^= 0x01
    w.write_bytes(bytes(b))
    (local / "config.json").unlink()
    (local / "surprise.txt").write_text("x")
    p = hm("verify", "--lock", str(lock), "--repo", "acme/tiny", str(local), "--json")
    assert p.returncode == 1
    d = json.loads(p.stdout)[0]
    assert d["modified"] == ["weights.bin"] and d["missing"] == ["config.json"] and d["extra"] == ["surprise.txt"]
    # the cache too: a blob changed under a snapshot
    blob = next(cache.glob(f"models--acme--tiny/blobs/{hashlib.sha256(fixture_data.files['big.dat']).hexdigest()}"))
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.seek(7)
        fh.write(b"\x00" if fixture_data.files["big.dat"][7] != 0 else b"\x01")
    p = hm("verify", "--lock", str(lock), "--hf-cache", str(cache))
    assert p.returncode == 1 and "modified big.dat" in " ".join(p.stdout.split())
    bad = tmp_path / "bad.lock"
    bad.write_text('version = 1\n[[repos]]\nrepo_id = "../x"\nrevision = "main"\ncommit = "0"\n')
    p = hm("verify", "--lock", str(bad), str(local))
    assert p.returncode == 2 and "repo id" in p.stderr


def test_sync_lock_mirrors_exactly_what_the_lock_names(hub: FakeHub, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "a.bin": os.urandom(5000), "b.txt": b"b", "[odd]*name?.txt": b"odd"}
    c1 = hub.commit("acme/locked", files)
    a = tmp_path / "a"
    assert hm("sync", "acme/locked", "--data", str(a), "--upstream", hub.url).returncode == 0
    lock = tmp_path / "x.lock"
    assert hm("lock", "acme/locked@main", "--data", str(a), "-o", str(lock)).returncode == 0
    hub.commit("acme/locked", {**files, "new.txt": b"later"})  # upstream moves on
    b = tmp_path / "b"
    p = hm("sync", "--lock", str(lock), "--data", str(b), "--upstream", hub.url, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["commit"] == c1
    s = Server(b, "--offline")
    try:
        tree = raw(s.url, "GET", f"/api/models/acme/locked/tree/{c1}?recursive=true").json()
        assert sorted(e["path"] for e in tree) == sorted(files)
        assert raw(s.url, "GET", f"/acme/locked/resolve/{c1}/%5Bodd%5D%2Aname%3F.txt").body == b"odd"
    finally:
        s.stop()


@pytest.mark.e2e
def test_bundle_exported_on_one_data_dir_serves_from_a_fresh_one(fixture_data: Fixture, tmp_path: Path) -> None:
    bundle = tmp_path / "x.tar"
    p = hm("export", "acme/tiny", "datasets/acme/ds@main", "--data", str(fixture_data.data), "-o", str(bundle))
    assert p.returncode == 0, p.stderr
    fresh = tmp_path / "fresh"
    p = hm("import-bundle", str(bundle), "--data", str(fresh), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["blobs_new"] > 0
    sound_and_complete(fresh)
    s = Server(fresh, "--offline")
    try:
        out = run_client(
            """
            import hashlib
            from huggingface_hub import hf_hub_download
            out({"w": hashlib.sha256(open(hf_hub_download("acme/tiny", "weights.bin"), "rb").read()).hexdigest(),
                 "tag": open(hf_hub_download("acme/tiny", "config.json", revision="v1.0")).read(),
                 "ds": open(hf_hub_download("acme/ds", "data/train.csv", repo_type="dataset")).read()[:10]})
            """,
            s.url, tmp_path / "hf",
        )
        assert out["w"] == hashlib.sha256(fixture_data.files["weights.bin"]).hexdigest()
        assert '"version": 1' in out["tag"] and out["ds"] == "text,label"
    finally:
        s.stop()
    # importing again is idempotent
    assert json.loads(hm("import-bundle", str(bundle), "--data", str(fresh), "--json").stdout)["blobs_new"] == 0


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
        return ti, data
    return ti, None


def test_bundle_import_refuses_unsafe_or_tampered_members(fixture_data: Fixture, tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    assert hm("export", "tinygpt", "--data", str(fixture_data.data), "-o", str(good)).returncode == 0
    with tarfile.open(good) as tar:
        manifest = tar.extractfile("hubmirror-bundle.json").read()  # type: ignore[union-attr]
        blob_name = next(m.name for m in tar.getmembers() if m.name.startswith("blobs/"))
        blob = tar.extractfile(blob_name).read()  # type: ignore[union-attr]
    m = _info("hubmirror-bundle.json", manifest)
    cases = {
        "absolute": [m, _info("/tmp/evil", b"x")],
        "dotdot": [m, _info("blobs/../../evil", b"x")],
        "symlink": [m, _info("blobs/link", kind=tarfile.SYMTYPE, link="/etc/passwd")],
        "hardlink": [m, _info("blobs/hard", kind=tarfile.LNKTYPE, link="hubmirror-bundle.json")],
        "device": [m, _info("blobs/dev", kind=tarfile.CHRTYPE)],
        "fifo": [m, _info("blobs/fifo", kind=tarfile.FIFOTYPE)],
        "unlisted": [m, _info("blobs/" + "0" * 64, b"x")],
        "manifest-not-first": [_info(blob_name, blob), m],
        "tampered": [m, _info(blob_name, bytes([blob[0] ^ 1]) + blob[1:])],
        "missing-blob": [m],
    }
    needles = {"absolute": "absolute path", "dotdot": "escapes", "symlink": "links", "hardlink": "links",
               "device": "devices", "fifo": "devices", "unlisted": "not a blob listed", "manifest-not-first": "must start",
               "tampered": "hashes to", "missing-blob": "lacks"}
    outside_before = sorted(os.listdir(tmp_path))
    for name, members in cases.items():
        path = tmp_path / f"{name}.tar"
        _tar(path, members)
        dest = tmp_path / f"dest-{name}"
        p = hm("import-bundle", str(path), "--data", str(dest))
        assert p.returncode != 0 and needles[name] in p.stderr, (name, p.stderr)
        assert "Traceback" not in p.stderr
        cat = Catalog(f"sqlite:///{dest / 'catalog.sqlite3'}")
        assert cat.list_repos() == [], name  # nothing recorded
        assert list(LocalBlobStore(dest / "blobs").list()) in ([], [hashlib.sha256(blob).hexdigest()])
        cat.close()
    new = set(os.listdir(tmp_path)) - set(outside_before)
    assert all(n.startswith("dest-") or n.endswith(".tar") for n in new)
    assert not Path("/tmp/evil").exists()


@pytest.mark.e2e
def test_hf_cache_export_loads_with_hf_hub_offline(fixture_data: Fixture, tmp_path: Path) -> None:
    cache = tmp_path / "hfcache"
    p = hm("export", "sentence-transformers/all-MiniLM-L6-v2@main", "acme/tiny@v1.0", "--data",
           str(fixture_data.data), "--hf-cache", str(cache))
    assert p.returncode == 0, p.stderr
    out = run_client(
        """
        from huggingface_hub import hf_hub_download, snapshot_download
        from transformers import AutoConfig, AutoTokenizer
        cfg = AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        tok = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        d = snapshot_download("sentence-transformers/all-MiniLM-L6-v2")
        out({"hidden": cfg.hidden_size, "ids": tok("hi")["input_ids"],
             "tag": open(hf_hub_download("acme/tiny", "config.json", revision="v1.0")).read(), "dir": d})
        """,
        "http://127.0.0.1:9", tmp_path / "hf", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )
    assert "error" not in out, out
    assert out["hidden"] == 384 and out["ids"][0] == 101 and '"version": 1' in out["tag"]
    assert out["dir"].endswith(fixture_data.commits["minilm"])
    model = cache / "models--sentence-transformers--all-MiniLM-L6-v2"
    weights = model / "snapshots" / fixture_data.commits["minilm"] / "model.safetensors"
    assert weights.is_symlink() and weights.resolve().parent == (model / "blobs").resolve()
    assert weights.read_bytes() == (minilm_folder() / "model.safetensors").read_bytes()


def test_gc_under_concurrent_syncs_never_deletes_a_referenced_blob(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    hub.commit("acme/churn", {f"f{i}.bin": os.urandom(50_000) for i in range(4)})
    assert hm("mirror", "add", "acme/churn", "--data", str(data)).returncode == 0
    assert hm("sync", "acme/churn", "--data", str(data), "--upstream", hub.url).returncode == 0
    # retention: keep only the newest commit of each branch, so gc has real work to do
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    m = cat.get_mirror(RepoRef(RepoType.MODEL, "acme/churn"))
    assert m is not None
    cat.upsert_mirror(m.spec.model_copy(update={"keep_last": 1}), "cli")
    cat.close()
    errors: list[str] = []
    stop = threading.Event()

    def syncer() -> None:
        for _ in range(6):
            hub.commit("acme/churn", {f"f{i}.bin": os.urandom(50_000) for i in range(4)})
            p = hm("sync", "acme/churn", "--data", str(data), "--upstream", hub.url)
            if p.returncode != 0:
                errors.append(p.stderr)
        stop.set()

    def collector() -> None:
        while not stop.is_set():
            p = hm("gc", "--data", str(data), "--json")
            if p.returncode != 0:
                errors.append(p.stderr)

    threads = [threading.Thread(target=syncer), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    sound_and_complete(data)
    report = json.loads(hm("gc", "--data", str(data), "--json").stdout)
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    repo = cat.get_repo(RepoRef(RepoType.MODEL, "acme/churn"))
    assert repo is not None
    assert len([c for r, _o, c in cat.all_commits() if r == repo.pk]) == 1  # keep_last = 1
    assert len([b.sha256 for b in LocalBlobStore(data / "blobs").list()]) == 4
    assert report["blobs_deleted"] == 0
    cat.close()


def test_retention_keeps_tags_and_pins_and_dry_run_changes_nothing(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    c1 = hub.commit("acme/ret", {"a.txt": b"1"})
    hub.tag("acme/ret", "v1", c1)
    assert hm("mirror", "add", "acme/ret", "--revision", "main", "--revision", "v*", "--data", str(data)).returncode == 0
    assert hm("sync", "acme/ret", "--data", str(data), "--upstream", hub.url).returncode == 0
    c2 = hub.commit("acme/ret", {"a.txt": b"2"})
    assert hm("sync", "acme/ret", "--data", str(data), "--upstream", hub.url).returncode == 0
    assert hm("pin", f"acme/ret@{c2}", "--data", str(data)).returncode == 0
    c3 = hub.commit("acme/ret", {"a.txt": b"3"})
    assert hm("sync", "acme/ret", "--data", str(data), "--upstream", hub.url).returncode == 0
    c4 = hub.commit("acme/ret", {"a.txt": b"4"})
    assert hm("sync", "acme/ret", "--data", str(data), "--upstream", hub.url).returncode == 0
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    m = cat.get_mirror(RepoRef(RepoType.MODEL, "acme/ret"))
    cat.upsert_mirror(m.spec.model_copy(update={"keep_last": 1}), "cli")  # type: ignore[union-attr]
    cat.close()
    dry = json.loads(hm("gc", "--dry-run", "--json", "--data", str(data)).stdout)
    assert [c["commit"] for c in dry["commits_removed"]] == [c3] and dry["blobs_deleted"] == 1
    real = json.loads(hm("gc", "--json", "--data", str(data)).stdout)
    assert real["commits_removed"] == dry["commits_removed"] and real["blobs_deleted"] == 1
    s = Server(data, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/ret/resolve/v1/a.txt").body == b"1"  # tag kept
        assert raw(s.url, "GET", f"/acme/ret/resolve/{c2}/a.txt").body == b"2"  # pin kept
        assert raw(s.url, "GET", "/acme/ret/resolve/main/a.txt").body == b"4"
        assert raw(s.url, "GET", f"/acme/ret/resolve/{c3}/a.txt").headers["x-error-code"] == "RevisionNotFound"
        assert c4
    finally:
        s.stop()


def test_tag_repointed_upstream_is_kept_logged_and_flagged(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    c1 = hub.commit("acme/tags", {"a.txt": b"old"})
    hub.tag("acme/tags", "v1.0", c1)
    assert hm("mirror", "add", "acme/tags", "--revision", "v*", "--data", str(data)).returncode == 0
    assert hm("sync", "acme/tags", "--data", str(data), "--upstream", hub.url).returncode == 0
    c2 = hub.commit("acme/tags", {"a.txt": b"new"})
    hub.tag("acme/tags", "v1.0", c2)  # upstream re-points the tag
    p = hm("sync", "acme/tags", "--data", str(data), "--upstream", hub.url, "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout)["revisions"] == [{"revision": "v1.0", "commit": c1, "status": "tag-kept"}]
    st = hm("status", "--data", str(data))
    assert "TAG RE-POINTED UPSTREAM" in st.stdout and c2 in st.stdout
    s = Server(data, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/tags/resolve/v1.0/a.txt").body == b"old"  # never silently rewritten
        assert raw(s.url, "GET", f"/acme/tags/resolve/{c2}/a.txt").body == b"new"  # the new target is mirrored too
    finally:
        s.stop()
    p = hm("sync", "acme/tags", "--data", str(data), "--upstream", hub.url, "--retag", "--json")
    assert json.loads(p.stdout)["revisions"][0] == {"revision": "v1.0", "commit": c2, "status": "synced"}
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    repo = cat.get_repo(RepoRef(RepoType.MODEL, "acme/tags"))
    hist = cat.ref_history(repo, "refs/tags/v1.0")  # type: ignore[arg-type]
    assert [(h["old_commit"], h["new_commit"]) for h in hist] == [(None, c1), (c1, c2)]
    events = cat.audit_events(RepoRef(RepoType.MODEL, "acme/tags"))
    assert [e["action"] for e in events if e["action"] != "sync"] == ["tag-repointed-upstream", "tag-moved"]
    assert [e["detail"]["trigger"] for e in events if e["action"] == "sync"] == ["cli", "cli", "cli"]
    cat.close()


def test_frozen_mirror_is_served_but_not_synced(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    hub.commit("acme/ice", {"a.txt": b"1"})
    assert hm("mirror", "add", "acme/ice", "--data", str(data)).returncode == 0
    assert hm("sync", "acme/ice", "--data", str(data), "--upstream", hub.url).returncode == 0
    assert hm("mirror", "freeze", "acme/ice", "--data", str(data)).returncode == 0
    hub.commit("acme/ice", {"a.txt": b"2"})
    p = hm("sync", "acme/ice", "--data", str(data), "--upstream", hub.url)
    assert p.returncode == 1 and "frozen" in p.stderr
    assert "FROZEN" in hm("status", "--data", str(data)).stdout
    assert hm("mirror", "freeze", "acme/ice", "--undo", "--data", str(data)).returncode == 0
    assert hm("sync", "acme/ice", "--data", str(data), "--upstream", hub.url).returncode == 0


def test_purge_removes_the_repo_and_only_its_own_blobs(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    shared = b"shared bytes"
    hub.commit("acme/doomed", {"shared.txt": shared, "own.bin": os.urandom(2000)})
    hub.commit("acme/other", {"shared.txt": shared})
    for r in ("acme/doomed", "acme/other"):
        assert hm("sync", r, "--data", str(data), "--upstream", hub.url).returncode == 0
    p = hm("purge", "acme/doomed", "--data", str(data))
    assert p.returncode != 0  # asks for confirmation; none given
    p = hm("purge", "acme/doomed", "--data", str(data), "--yes", "--reason", "licence withdrawn")
    assert p.returncode == 0 and "1 blobs" in p.stdout, p.stdout + p.stderr
    blobs = [b.sha256 for b in LocalBlobStore(data / "blobs").list()]
    assert blobs == [hashlib.sha256(shared).hexdigest()]
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    ev = cat.audit_events(RepoRef(RepoType.MODEL, "acme/doomed"), "purge")
    assert ev and ev[0]["detail"]["reason"] == "licence withdrawn"
    cat.close()
    s = Server(data, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/doomed/resolve/main/own.bin").headers["x-error-code"] == "RepoNotFound"
        assert raw(s.url, "GET", "/acme/other/resolve/main/shared.txt").body == shared
    finally:
        s.stop()


def test_scrub_finds_corruption_and_refetches_it(hub: FakeHub, tmp_path: Path) -> None:
    data = tmp_path / "d"
    files = {"a.bin": os.urandom(100_000), "b.txt": b"hello"}
    hub.commit("acme/scrub", files)
    assert hm("sync", "acme/scrub", "--data", str(data), "--upstream", hub.url).returncode == 0
    store = LocalBlobStore(data / "blobs")
    sha = hashlib.sha256(files["a.bin"]).hexdigest()
    path = store.local_path(sha)
    assert path is not None
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(500)
        fh.write(bytes([files["a.bin"][500] ^ 0xFF]))
    p = hm("scrub", "--data", str(data), "--upstream", hub.url, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["corrupt"] == [sha] and r["repaired"] == [sha] and r["checked"] == 2
    assert b"".join(store.read(sha)) == files["a.bin"]
    # no upstream to repair from: reported, removed so it is never served, exit 1
    path = store.local_path(sha)
    path.chmod(0o644)  # type: ignore[union-attr]
    with open(path, "r+b") as fh:  # type: ignore[arg-type]
        fh.write(b"\x00\x00")
    hub.stop()
    p = hm("scrub", "--data", str(data), "--upstream", hub.url, "--rate", "10MiB")
    assert p.returncode == 1 and "unrepaired" in p.stdout
    assert store.stat(sha) is None
    shutil.rmtree(data)
