"""Pull-through: repos that are not hosted or declared come from the upstream on first use,
then from the mirror's disk, also when the upstream is down."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from backends import current as backend
from conftest import minilm_folder
from fakes.hub import FakeHub
from helpers import Server, raw, run_client

FAST = {"HUBMIRROR_UPSTREAM_BACKOFF": "0.01"}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=4).start()
    yield h
    h.stop()


def proxy_server(data: Path, hub: FakeHub, **env: str) -> Server:
    return Server(data, "--upstream", hub.url, env={**FAST, **env})


def stored_blobs(data: Path) -> list[str]:
    return [b.sha256 for b in backend().store(data).list()]


def sound(data: Path) -> None:
    """Every blob the store of `data` holds (there are some) hashes to its name."""
    store = backend().store(data)
    blobs = [b.sha256 for b in store.list()]
    assert blobs, "the store holds no blob: the server kept its fills somewhere else"
    for sha in blobs:
        assert hashlib.sha256(b"".join(store.read(sha))).hexdigest() == sha


def get_raw_body(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, bool]:
    """GET and read the body; returns (status, body, complete) without raising on a cut body."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        try:
            body = r.read()
            return r.status, body, True
        except http.client.IncompleteRead as e:
            return r.status, e.partial, False
    except (ConnectionError, http.client.RemoteDisconnected):
        return 0, b"", False
    finally:
        conn.close()


@pytest.mark.e2e
def test_cold_warm_and_upstream_stopped_with_the_real_client(hub: FakeHub, tmp_path: Path) -> None:
    files = {p.relative_to(minilm_folder()).as_posix(): p.read_bytes() for p in minilm_folder().rglob("*") if p.is_file()}
    c1 = hub.commit("sentence-transformers/all-MiniLM-L6-v2", files)
    s = proxy_server(tmp_path / "d", hub)
    script = """
        import os, hashlib
        from huggingface_hub import snapshot_download, HfApi
        from transformers import AutoConfig, AutoTokenizer
        d = snapshot_download("sentence-transformers/all-MiniLM-L6-v2", cache_dir=os.path.join(os.environ["HF_HOME"], "CACHE"))
        cfg = AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", cache_dir=os.path.join(os.environ["HF_HOME"], "T-CACHE"))
        tok = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", cache_dir=os.path.join(os.environ["HF_HOME"], "T-CACHE"))
        info = HfApi().model_info("sentence-transformers/all-MiniLM-L6-v2")
        out({"files": {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest()
                       for p in FILES}, "dir": d, "hidden": cfg.hidden_size, "ids": tok("hello world")["input_ids"],
             "pipeline_tag": info.pipeline_tag})
    """.replace("FILES", repr(sorted(files)))
    expected = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    try:
        for label in ("cold", "warm"):
            res = run_client(script.replace("CACHE", label), s.url, tmp_path / "hf")
            assert "error" not in res, res
            assert res["files"] == expected and res["dir"].endswith(c1)
            assert res["hidden"] == 384 and res["ids"][0] == 101
            assert res["pipeline_tag"] == "feature-extraction"  # the upstream's metadata is kept
            if label == "cold":
                cold_bytes = hub.file_bytes("sentence-transformers/all-MiniLM-L6-v2")
                assert cold_bytes == sum(len(d) for d in files.values())  # each file fetched once
        assert hub.file_bytes("sentence-transformers/all-MiniLM-L6-v2") == cold_bytes  # warm: nothing upstream
        hub.stop()  # the upstream goes away
        res = run_client(script.replace("CACHE", "down"), s.url, tmp_path / "hf")
        assert "error" not in res, res
        assert res["files"] == expected
        h = raw(s.url, "HEAD", "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/config.json")
        assert h.status == 200 and h.headers["x-repo-commit"] == c1
        # the branch answer came from the last known commit (the branch TTL may still hold it)
        r = raw(s.url, "GET", "/acme/never-seen/resolve/main/config.json")
        assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound"
        # a missing repo answers like a forbidden one ("Repository not found"); why goes to the log
        assert r.json()["error"] == "Repository not found" and "cannot be reached" in s.log.read_text()
        up = urlsplit(hub.url)
        assert f"{up.hostname}:{up.port}" not in r.body.decode() + str(r.headers)  # never names the upstream
        sound(tmp_path / "d")
    finally:
        s.stop()


def test_stale_branch_is_marked_when_upstream_is_down(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/p", {"config.json": b"{}", "w.bin": os.urandom(1000)})
    s = proxy_server(tmp_path / "d", hub, HUBMIRROR_PROXY__BRANCH_TTL="0")
    try:
        assert raw(s.url, "GET", "/acme/p/resolve/main/w.bin").status == 200
        assert "x-hubmirror-stale" not in raw(s.url, "HEAD", "/acme/p/resolve/main/w.bin").headers
        hub.stop()
        h = raw(s.url, "HEAD", "/acme/p/resolve/main/w.bin")
        assert h.status == 200 and "upstream unreachable" in h.headers["x-hubmirror-stale"]
        info = raw(s.url, "GET", "/api/models/acme/p/revision/main")
        assert info.status == 200 and "x-hubmirror-stale" in info.headers
        assert raw(s.url, "GET", "/acme/p/resolve/nope/w.bin").headers["x-error-code"] == "RevisionNotFound"
    finally:
        s.stop()


def test_offline_flag_never_contacts_the_upstream(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/p", {"config.json": b"{}"})
    s = proxy_server(tmp_path / "d", hub)
    try:
        assert raw(s.url, "GET", "/acme/p/resolve/main/config.json").status == 200
    finally:
        s.stop()
    hub.reset_counters()
    s = Server(tmp_path / "d", "--upstream", hub.url, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/p/resolve/main/config.json").status == 200
        r = raw(s.url, "GET", "/acme/other/resolve/main/config.json")
        assert r.headers["x-error-code"] == "RepoNotFound"
        assert hub.calls == []
    finally:
        s.stop()


def test_sixteen_cold_clients_cause_one_upstream_download(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(16 * 1024 * 1024)
    hub.commit("acme/big", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.01)  # keep the fill in flight while clients join
    s = proxy_server(tmp_path / "d", hub)
    try:
        path = "/acme/big/resolve/main/model.safetensors"
        reqs = [({}, data)] * 12 + [({"Range": "bytes=1000-1999"}, data[1000:2000])] * 2 + \
               [({"Range": f"bytes={len(data) - 10}-"}, data[-10:])] * 2
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda r: get_raw_body(s.url, path, r[0]), reqs))
        for (hdrs, want), (status, body, complete) in zip(reqs, results):
            assert complete and body == want, (hdrs, status, len(body))
        upstream = hub.file_bytes("acme/big", "model.safetensors")
        assert upstream <= 1.05 * len(data), upstream
        # warm now: served from disk
        hub.reset_counters()
        assert get_raw_body(s.url, path)[1] == data
        assert hub.file_bytes("acme/big") == 0
    finally:
        s.stop()


def test_bad_or_cut_upstream_aborts_the_client_and_publishes_nothing(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    small = b'{"regular": true}' * 100
    hub.commit("acme/bad", {"model.safetensors": data, "config.json": small})
    s = proxy_server(tmp_path / "d", hub)
    path = "/acme/bad/resolve/main/model.safetensors"
    try:
        hub.fault("flip", "/blob/*", times=1, at=len(data) - 10)
        status, body, complete = get_raw_body(s.url, path)
        assert status == 200 and not complete and len(body) < len(data)  # never a clean end
        hub.fault("flip", "/acme/bad/resolve/*/config.json", times=1, at=5)
        status, body, complete = get_raw_body(s.url, "/acme/bad/resolve/main/config.json")
        # failed before a byte went out: a clean 502; after: an aborted 200; never a clean 200
        assert (status == 502 and complete) or (status == 200 and not complete)
        hub.fault("cut", "/blob/*", times=20, at=100_000)  # 100 kB a try: more cuts than the client resumes
        status, body, complete = get_raw_body(s.url, path)
        # cut before the first byte reached the client: a clean 503; after: an aborted 200
        assert (status == 503 and complete) or (status == 200 and not complete and len(body) < len(data))
        assert stored_blobs(tmp_path / "d") == []
        # the upstream recovers: the next request fills and serves the right bytes
        hub.faults.clear()
        assert get_raw_body(s.url, path) == (200, data, True)
        assert get_raw_body(s.url, "/acme/bad/resolve/main/config.json") == (200, small, True)
        sound(tmp_path / "d")
    finally:
        s.stop()


def test_upstream_error_before_the_first_byte_is_a_clean_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/e", {"w.bin": os.urandom(1000)})
    s = proxy_server(tmp_path / "d", hub)
    try:
        assert raw(s.url, "HEAD", "/acme/e/resolve/main/w.bin").status == 200  # metadata is cached now
        hub.fault("status", "/blob/*", times=2, status=503)  # the first try and its one retry
        r = raw(s.url, "GET", "/acme/e/resolve/main/w.bin")
        assert r.status == 503 and r.headers["x-error-code"] == "UpstreamUnavailable" and "error" in r.json()
        assert raw(s.url, "GET", "/acme/e/resolve/main/w.bin").status == 200  # not cached as content
    finally:
        s.stop()


def test_rules_allow_deny_regex_case_insensitive_and_cache_rules(hub: FakeHub, tmp_path: Path) -> None:
    for repo in ("acme/ok", "Secret-Org/model", "acme/nocache", "other/x"):
        hub.commit(repo, {"config.json": repo.encode(), "w.bin": os.urandom(5000)})
    env = {"HUBMIRROR_PROXY__ALLOW": '["acme/*", "re:^secret-org/.*$"]', "HUBMIRROR_PROXY__DENY": '["SECRET-ORG/*"]',
           "HUBMIRROR_PROXY__CACHE_DENY": '["acme/nocache"]'}
    s = proxy_server(tmp_path / "d", hub, **env)
    try:
        assert raw(s.url, "GET", "/acme/ok/resolve/main/config.json").body == b"acme/ok"
        for repo in ("Secret-Org/model", "other/x"):
            r = raw(s.url, "GET", f"/{repo}/resolve/main/config.json")
            assert r.headers["x-error-code"] == "RepoNotFound" and r.json()["error"] == "Repository not found"
        assert "not allowed" in s.log.read_text()
        before = set(stored_blobs(tmp_path / "d"))
        assert get_raw_body(s.url, "/acme/nocache/resolve/main/w.bin")[2]
        assert set(stored_blobs(tmp_path / "d")) == before  # streamed through, not kept
        assert not any(p.startswith("/api/models/Secret-Org") or p.startswith("/api/models/other")
                       for _, p in hub.calls)
    finally:
        s.stop()


def test_negative_caching_and_errors_that_are_not_cached(hub: FakeHub, tmp_path: Path) -> None:
    s = proxy_server(tmp_path / "d", hub, HUBMIRROR_PROXY__NEGATIVE_TTL="30")
    try:
        for _ in range(3):
            assert raw(s.url, "GET", "/acme/ghost/resolve/main/x").headers["x-error-code"] == "RepoNotFound"
        assert sum(1 for _, p in hub.calls if p.startswith("/api/models/acme/ghost")) == 1
        hub.commit("acme/flaky", {"config.json": b"{}"})
        hub.fault("status", "/api/models/acme/flaky/revision/main", times=2, status=500)
        r = raw(s.url, "GET", "/acme/flaky/resolve/main/config.json")
        assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound"  # nothing cached, upstream erroring
        assert raw(s.url, "GET", "/acme/flaky/resolve/main/config.json").status == 200  # the 500 was not cached
        hub.fault("status", "/api/models/acme/limited/*", times=2,
                  status=429, headers={"Retry-After": "0"})
        hub.commit("acme/limited", {"config.json": b"{}"})
        assert raw(s.url, "GET", "/acme/limited/resolve/main/config.json").status == 401  # RepoNotFound, anonymous
        assert raw(s.url, "GET", "/acme/limited/resolve/main/config.json").status == 200
    finally:
        s.stop()


def test_private_and_gated_upstream_repos_are_not_pulled_through(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/private", {"config.json": b"{}"})
    hub.repos[("model", "acme/private")].private = True
    hub.commit("acme/gated", {"config.json": b"{}"})
    hub.repos[("model", "acme/gated")].gated = "manual"
    s = proxy_server(tmp_path / "d", hub)
    try:
        for repo in ("acme/private", "acme/gated"):
            r = raw(s.url, "GET", f"/{repo}/resolve/main/config.json")
            assert r.status == 403 and r.headers["x-error-code"] == "GatedRepo"
        assert stored_blobs(tmp_path / "d") == []
    finally:
        s.stop()


def test_disk_budget_evicts_least_recently_used_proxied_blobs_only(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"f{i}.bin": os.urandom(400_000) for i in range(4)}
    hub.commit("acme/lru", files)
    data = tmp_path / "d"
    # a declared mirror's blobs are never evicted
    import subprocess
    import sys

    keep = os.urandom(400_000)
    hub.commit("acme/kept", {"k.bin": keep})
    p = subprocess.run([sys.executable, "-m", "hubmirror", "sync", "acme/kept", "--data", str(data),
                        "--upstream", hub.url], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = proxy_server(data, hub, HUBMIRROR_PROXY__MAX_BYTES="1000000")
    try:
        for i in range(4):
            assert get_raw_body(s.url, f"/acme/lru/resolve/main/f{i}.bin") == (200, files[f"f{i}.bin"], True)
            time.sleep(0.05)
        blobs = set(stored_blobs(data))
        sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
        assert sha["f3.bin"] in blobs and sha["f2.bin"] in blobs
        assert sha["f0.bin"] not in blobs  # least recently used went first
        assert hashlib.sha256(keep).hexdigest() in blobs
        # an evicted file is fetched again on demand
        assert get_raw_body(s.url, "/acme/lru/resolve/main/f0.bin") == (200, files["f0.bin"], True)
    finally:
        s.stop()


def test_no_free_space_refuses_the_fill_and_keeps_serving(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/space", {"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})
    s = proxy_server(tmp_path / "d", hub)
    try:
        assert get_raw_body(s.url, "/acme/space/resolve/main/a.bin")[2]
    finally:
        s.stop()
    s = proxy_server(tmp_path / "d", hub, HUBMIRROR_PROXY__MIN_FREE="1000000TiB")
    try:
        r = raw(s.url, "GET", "/acme/space/resolve/main/b.bin")
        assert r.status == 507 and "disk space" in r.json()["error"]
        assert get_raw_body(s.url, "/acme/space/resolve/main/a.bin")[2]  # cached content still served
    finally:
        s.stop()


@pytest.mark.e2e
def test_proxied_api_answers_are_rewritten_for_this_server(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"d/f{i}.txt": f"{i}".encode() for i in range(10)}
    files["m.safetensors"] = os.urandom(1000)
    c1 = hub.commit("acme/api", files, message="first")
    c2 = hub.commit("acme/api", {**files, "extra.txt": b"x"}, message="second")
    hub.tag("acme/api", "v1", c1)
    s = proxy_server(tmp_path / "d", hub)
    try:
        r = raw(s.url, "GET", "/api/models/acme/api/tree/main?recursive=true&limit=5")
        assert r.headers["link"].startswith(f"<{s.url}/api/models/acme/api/tree/main?")
        assert "xetHash" not in r.body.decode() and hub.url not in r.body.decode()
        h = raw(s.url, "HEAD", "/acme/api/resolve/main/m.safetensors")
        assert "location" not in h.headers and not any(k.startswith("x-xet") for k in h.headers)
        refs = raw(s.url, "GET", "/api/models/acme/api/refs").json()
        assert refs["tags"] == [{"name": "v1", "ref": "refs/tags/v1", "targetCommit": c1}]
        commits = raw(s.url, "GET", "/api/models/acme/api/commits/main").json()
        assert [c["id"] for c in commits] == [c2, c1] and commits[0]["title"] == "second"
        assert raw(s.url, "HEAD", "/acme/api/resolve/v1/extra.txt").headers["x-error-code"] == "EntryNotFound"
        out = run_client(
            """
            from huggingface_hub import HfApi
            api = HfApi()
            out({"n": len(list(api.list_repo_tree("acme/api", recursive=True))),
                 "tags": [t.name for t in api.list_repo_refs("acme/api").tags],
                 "commits": len(api.list_repo_commits("acme/api"))})
            """,
            s.url, tmp_path / "hf",
        )
        assert out == {"n": 13, "tags": ["v1"], "commits": 2}
    finally:
        s.stop()


@pytest.mark.e2e
def test_real_client_never_keeps_corrupt_bytes_from_a_bad_upstream(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    hub.commit("acme/flip", {"model.safetensors": data})
    hub.fault("flip", "/blob/*", times=1, at=len(data) // 2)
    s = proxy_server(tmp_path / "d", hub)
    try:
        script = """
            import hashlib
            from huggingface_hub import hf_hub_download
            p = hf_hub_download("acme/flip", "model.safetensors")
            out(hashlib.sha256(open(p, "rb").read()).hexdigest())
        """
        first = run_client(script, s.url, tmp_path / "hf", env={"HF_HUB_DOWNLOAD_TIMEOUT": "30"})
        # the aborted body makes the client resume with Range from the mirror, which by then
        # refetches and verifies; either way the client ends with the right bytes or an error
        assert first == hashlib.sha256(data).hexdigest() or "error" in first
        again = run_client(script, s.url, tmp_path / "hf2")
        assert again == hashlib.sha256(data).hexdigest()
        sound(tmp_path / "d")
    finally:
        s.stop()


@pytest.mark.e2e
def test_datasets_load_dataset_through_a_cold_mirror(hub: FakeHub, tmp_path: Path) -> None:
    csv = "text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(30))
    hub.commit("acme/cold-ds", {"README.md": b"# ds\n", "data/train.csv": csv.encode()}, repo_type="dataset")
    s = proxy_server(tmp_path / "d", hub)
    try:
        out = run_client(
            """
            import datasets
            ds = datasets.load_dataset("acme/cold-ds", split="train")
            out({"rows": ds.num_rows, "first": ds[0]})
            """,
            s.url, tmp_path / "hf",
        )
        assert out == {"rows": 30, "first": {"text": "row 0", "label": 0}}, out
    finally:
        s.stop()
