"""Clients and upstreams that do not play along.

* `check-update` obeys the rules of every other read: only repos this mirror follows from the
  upstream are answered, denied/offline/disabled means the upstream is not asked, private and
  gated upstream repos leak nothing, answers are cached, hostile inputs are a clean 400.
* `X-Forwarded-*` headers are believed only from `trusted_proxies`.
* `HEAD` as a revision is the default branch (what the @huggingface/hub JavaScript client sends),
  checked with the real JavaScript client installed from npm.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Fixture
from fakes.hub import FakeHub
from helpers import Reply, Server, free_port, raw

HM = [sys.executable, "-m", "hubmirror"]
FAST = {"HUBMIRROR_UPSTREAM_BACKOFF": "0.01"}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


# -- helpers -----------------------------------------------------------------------------------


def sync(hub: FakeHub, repo: str, data: Path, *extra: str) -> None:
    p = subprocess.run([*HM, "sync", repo, "--data", str(data), "--upstream", hub.url, *extra],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def host(repo: str, data: Path, folder: Path, files: dict[str, bytes]) -> None:
    """A repo hosted here (`hubmirror import`), not followed from any upstream."""
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    p = subprocess.run([*HM, "import", repo, str(folder), "--data", str(data)], check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def pull(server: Server, repo: str, path: str = "config.json") -> None:
    """Pull a repo through the mirror: a GET of one of its files."""
    r = raw(server.url, "GET", f"/{repo}/resolve/main/{path}")
    assert r.status == 200, r


def proxy_server(data: Path, hub: FakeHub, *args: str, **env: str) -> Server:
    return Server(data, "--upstream", hub.url, *args, env={**FAST, **env})


def check(server: Server, repo: str, query: str = "", repo_type: str = "models") -> Reply:
    return raw(server.url, "GET", f"/api/mirror/{repo_type}/{repo}/check-update{query}")


def info_calls(hub: FakeHub, repo: str, repo_type: str = "models") -> int:
    """Upstream repo-info calls for `repo` (`/api/models/{repo}` or `/api/models/{repo}/revision/...`)."""
    base = f"/api/{repo_type}/{repo}"
    return sum(1 for _, p in hub.calls if p.split("?")[0] == base or p.startswith(base + "/revision/"))


def tree_calls(hub: FakeHub, repo: str, repo_type: str = "models") -> int:
    return sum(1 for _, p in hub.calls if p.startswith(f"/api/{repo_type}/{repo}/tree/"))


def calls_about(hub: FakeHub, repo: str) -> list[tuple[str, str]]:
    return [c for c in hub.calls if f"/{repo}/" in c[1] + "/" or f"/{repo}?" in c[1]]


def everything(r: Reply) -> str:
    """Body and headers of a reply, for "nothing leaks" assertions."""
    return r.body.decode("utf-8", "replace") + " " + json.dumps(r.headers)


def is_json_error(r: Reply) -> bool:
    try:
        doc = r.json()
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str) and bool(doc["error"])


# -- A. check-update ---------------------------------------------------------------------------


def test_check_update_of_repos_not_followed_is_not_found_and_costs_the_upstream_nothing(
    hub: FakeHub, tmp_path: Path
) -> None:
    public = hub.commit("acme/public", {"config.json": b'{"v": 1}', "a.txt": b"a"})
    private = hub.commit("acme/private", {"config.json": b'{"secret": 1}', "b.txt": b"b", "c.txt": b"c"})
    hub.repos[("model", "acme/private")].private = True
    gated = hub.commit("acme/gated", {"config.json": b'{"gated": 1}'})
    hub.repos[("model", "acme/gated")].gated = "manual"
    hosted_up = hub.commit("acme/hosted", {"config.json": b'{"upstream": 1}'})  # same name exists upstream
    ds = hub.commit("acme/ds", {"README.md": b"# ds\n"}, repo_type="dataset")
    data = tmp_path / "data"
    host("acme/hosted", data, tmp_path / "src", {"config.json": b'{"hosted": 1}'})
    s = proxy_server(data, hub)
    try:
        hub.reset_counters()
        secrets = {"acme/public": public, "acme/private": private, "acme/gated": gated, "acme/hosted": hosted_up}
        for repo, sha in secrets.items():
            for query in ("", "?revision=main", f"?revision={sha}", "?revision=HEAD"):
                r = check(s, repo, query)
                assert r.status == 401, (repo, query, r)  # RepoNotFound, to a client without a token
                assert r.headers["x-error-code"] == "RepoNotFound", (repo, query, r)
                assert is_json_error(r)
                text = everything(r)
                if query != f"?revision={sha}":  # the client sent this sha itself
                    assert sha not in text, (repo, query, text)
                assert "lastModified" not in text and "upstream_last_modified" not in text
                assert "files_changed" not in text
        r = check(s, "acme/ds", repo_type="datasets")
        assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound" and ds not in everything(r)
        r = check(s, "acme/never-anywhere")
        assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound"
        assert hub.calls == []
        # the hosted repo is still served, from here
        assert raw(s.url, "GET", "/acme/hosted/resolve/main/config.json").body == b'{"hosted": 1}'
        assert hub.calls == []
    finally:
        s.stop()


def test_check_update_of_a_pulled_through_repo_the_rules_now_deny(hub: FakeHub, tmp_path: Path) -> None:
    c1 = hub.commit("acme/pulled", {"config.json": b'{"v": 1}'})
    k1 = hub.commit("other/kept", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    s = proxy_server(data, hub)
    try:
        pull(s, "acme/pulled")
        pull(s, "other/kept")
        r = check(s, "acme/pulled")  # allowed for now: answered
        assert r.status == 200 and r.json()["upstream_commit"] == c1, r
    finally:
        s.stop()
    c2 = hub.commit("acme/pulled", {"config.json": b'{"v": 2}'})
    hub.reset_counters()
    s = proxy_server(data, hub, HUBMIRROR_PROXY__DENY='["acme/*"]')
    try:
        for query in ("", "?revision=main", f"?revision={c1}"):
            r = check(s, "acme/pulled", query)
            assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound", (query, r)
            assert c2 not in everything(r)
        assert hub.calls == [], hub.calls
        # a pulled-through repo the rules still allow is asked about, as before
        r = check(s, "other/kept")
        assert r.status == 200 and r.json()["upstream_commit"] == k1, r
        assert info_calls(hub, "other/kept") == 1
        assert calls_about(hub, "acme/pulled") == []
    finally:
        s.stop()


def test_check_update_offline_answers_the_last_known_commit_marked_stale(hub: FakeHub, tmp_path: Path) -> None:
    s1 = hub.commit("acme/synced", {"config.json": b'{"v": 1}', "a.txt": b"a"})
    p1 = hub.commit("acme/pulled", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    sync(hub, "acme/synced", data)
    s = proxy_server(data, hub)
    try:
        pull(s, "acme/pulled")
    finally:
        s.stop()
    hub.commit("acme/synced", {"config.json": b'{"v": 2}'})  # the upstream moves on: offline cannot know
    hub.commit("acme/pulled", {"config.json": b'{"v": 2}'})
    hub.reset_counters()
    s = proxy_server(data, hub, "--offline")
    try:
        for repo, sha in (("acme/synced", s1), ("acme/pulled", p1)):
            for query in ("", "?revision=main"):
                r = check(s, repo, query)
                assert r.status == 200, (repo, r)
                doc = r.json()
                assert doc["stale"], doc
                assert r.headers.get("x-hubmirror-stale"), r.headers
                assert doc["mirrored_commit"] == sha and doc["upstream_commit"] == sha, doc
                assert doc["update_available"] is False and doc["files_changed"] == 0, doc
        # a repo it never saw: nothing to answer from, nothing asked
        assert check(s, "acme/never").headers["x-error-code"] == "RepoNotFound"
        assert hub.calls == [], hub.calls
    finally:
        s.stop()


def test_check_update_with_pull_through_disabled(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/synced", {"config.json": b'{"v": 1}'})
    p1 = hub.commit("acme/pulled", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    sync(hub, "acme/synced", data)
    s = proxy_server(data, hub)
    try:
        pull(s, "acme/pulled")
    finally:
        s.stop()
    s2 = hub.commit("acme/synced", {"config.json": b'{"v": 2}'})
    p2 = hub.commit("acme/pulled", {"config.json": b'{"v": 2}'})
    hub.reset_counters()
    s = proxy_server(data, hub, HUBMIRROR_PROXY__ENABLED="false")
    try:
        r = check(s, "acme/pulled")
        assert r.status < 500, r
        assert p2 not in everything(r)  # nothing from the upstream
        if r.status == 200:  # answered from what is known, and says so
            doc = r.json()
            assert doc["stale"] and r.headers.get("x-hubmirror-stale"), doc
            assert doc["upstream_commit"] == p1 and doc["update_available"] is False, doc
        else:
            assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound", r
        assert hub.calls == [], hub.calls
        # a synced repo (origin mirror) still is asked about
        r = check(s, "acme/synced")
        assert r.status == 200, r
        doc = r.json()
        assert doc["upstream_commit"] == s2 and doc["update_available"] is True and not doc["stale"], doc
        assert "x-hubmirror-stale" not in r.headers
        assert info_calls(hub, "acme/synced") == 1
        assert calls_about(hub, "acme/pulled") == []
    finally:
        s.stop()


def test_check_update_with_pull_through_disabled_answers_like_the_reads(hub: FakeHub, tmp_path: Path) -> None:
    """With pull-through disabled, a pulled-through repo is still served from the cache (file, repo
    info); check-update answers like those reads: the last known upstream commit, marked stale
    ("pull-through is disabled", sync/check.py), without asking the upstream."""
    p1 = hub.commit("acme/pulled", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    s = proxy_server(data, hub)
    try:
        pull(s, "acme/pulled")
    finally:
        s.stop()
    hub.commit("acme/pulled", {"config.json": b'{"v": 2}'})
    hub.reset_counters()
    s = proxy_server(data, hub, HUBMIRROR_PROXY__ENABLED="false")
    try:
        f = raw(s.url, "GET", "/acme/pulled/resolve/main/config.json")
        assert f.status == 200 and f.headers["x-repo-commit"] == p1, f  # the reads serve it
        assert raw(s.url, "GET", "/api/models/acme/pulled/revision/main").json()["sha"] == p1
        r = check(s, "acme/pulled")
        assert r.status == 200, r
        doc = r.json()
        assert doc["stale"] and r.headers.get("x-hubmirror-stale"), (doc, r.headers)
        assert doc["mirrored_commit"] == doc["upstream_commit"] == p1 and doc["update_available"] is False, doc
        assert hub.calls == [], hub.calls
    finally:
        s.stop()


def test_check_update_is_cached_sequentially_and_concurrently(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"f{i}.txt": f"{i}".encode() for i in range(10)}
    hub.commit("acme/seq", files)
    hub.commit("acme/conc", files)
    data = tmp_path / "data"
    sync(hub, "acme/seq", data)
    sync(hub, "acme/conc", data)
    # the upstream moves: the answer needs its repo info and the new commit's file listing
    seq2 = hub.commit("acme/seq", {**files, "new.txt": b"n"})
    conc2 = hub.commit("acme/conc", {**files, "f0.txt": b"changed"})
    s = proxy_server(data, hub)
    try:
        hub.reset_counters()
        answers = []
        for _ in range(20):
            r = check(s, "acme/seq", "?revision=main")
            assert r.status == 200, r
            answers.append(r.json())
        assert all(a == answers[0] for a in answers)
        assert answers[0]["upstream_commit"] == seq2 and answers[0]["files_changed"] == 1
        assert info_calls(hub, "acme/seq") <= 1, hub.calls
        assert tree_calls(hub, "acme/seq") <= 1, hub.calls
        assert len(calls_about(hub, "acme/seq")) <= 2, hub.calls
        # twenty clients at once; the upstream is slow to answer the first repo-info call
        hub.reset_counters()
        hub.fault("hook", "/api/models/acme/conc/revision/*", times=1, fn=lambda: time.sleep(0.5))
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda _: check(s, "acme/conc", "?revision=main"), range(20)))
        assert all(r.status == 200 for r in replies), replies
        docs = [r.json() for r in replies]
        assert all(d == docs[0] for d in docs)
        assert docs[0]["upstream_commit"] == conc2 and docs[0]["files_changed"] == 1
        assert info_calls(hub, "acme/conc") <= 1, hub.calls
    finally:
        s.stop()
    # without a branch TTL every call asks again
    hub.reset_counters()
    s = proxy_server(data, hub, HUBMIRROR_PROXY__BRANCH_TTL="0")
    try:
        for _ in range(3):
            assert check(s, "acme/seq").status == 200
        assert info_calls(hub, "acme/seq") == 3
    finally:
        s.stop()


def test_check_update_concurrent_calls_list_a_new_commit_once(hub: FakeHub, tmp_path: Path) -> None:
    """Twenty anonymous clients asking at once about a branch that moved upstream: the new commit's
    file listing (up to `upstream_max_pages` pages) is fetched once, not once per client."""
    files = {f"f{i}.txt": f"{i}".encode() for i in range(10)}
    hub.commit("acme/conc", files)
    data = tmp_path / "data"
    sync(hub, "acme/conc", data)
    c2 = hub.commit("acme/conc", {**files, "f0.txt": b"changed"})
    s = proxy_server(data, hub)
    try:
        hub.reset_counters()
        hub.fault("hook", "/api/models/acme/conc/revision/*", times=1, fn=lambda: time.sleep(0.5))
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda _: check(s, "acme/conc"), range(20)))
        assert all(r.status == 200 and r.json()["upstream_commit"] == c2 for r in replies), replies
        assert info_calls(hub, "acme/conc") <= 1, hub.calls
        assert tree_calls(hub, "acme/conc") <= 1, (tree_calls(hub, "acme/conc"), hub.calls[:3])
    finally:
        s.stop()


def test_check_update_of_a_repo_that_became_private_or_gated_leaks_nothing(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/turned-private", {"config.json": b'{"v": 1}'})
    hub.commit("acme/turned-gated", {"config.json": b'{"v": 1}'})
    hub.commit("acme/pulled-private", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    sync(hub, "acme/turned-private", data)
    sync(hub, "acme/turned-gated", data)
    s = proxy_server(data, hub)
    try:
        pull(s, "acme/pulled-private")
    finally:
        s.stop()
    # later the upstream repos turn private or gated, with new commits
    new = {
        "acme/turned-private": hub.commit("acme/turned-private", {"config.json": b'{"v": 2}', "x.txt": b"x"}),
        "acme/turned-gated": hub.commit("acme/turned-gated", {"config.json": b'{"v": 2}'}),
        "acme/pulled-private": hub.commit("acme/pulled-private", {"config.json": b'{"v": 2}'}),
    }
    hub.repos[("model", "acme/turned-private")].private = True
    hub.repos[("model", "acme/turned-gated")].gated = "auto"
    hub.repos[("model", "acme/pulled-private")].private = True
    hub.reset_counters()
    s = proxy_server(data, hub)
    try:
        for repo, sha in new.items():
            for query in ("", "?revision=main"):
                r = check(s, repo, query)
                assert r.status == 401 and r.headers.get("x-error-code") == "RepoNotFound", (repo, r)
                assert is_json_error(r)
                text = everything(r)
                assert sha not in text, (repo, text)
                assert "upstream_commit" not in text and "files_changed" not in text
        assert sum(hub.file_bytes(repo) for repo in new) == 0  # and not a byte of their files
    finally:
        s.stop()
    # a mirror that allows gated repos answers for the pulled-through one
    s = proxy_server(data, hub, HUBMIRROR_PROXY__ALLOW_GATED="true")
    try:
        r = check(s, "acme/pulled-private")
        assert r.status == 200, r
        doc = r.json()
        assert doc["upstream_commit"] == new["acme/pulled-private"] and doc["update_available"] is True, doc
    finally:
        s.stop()


@pytest.fixture
def chk(hub: FakeHub, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A server with one synced repo, `acme/chk`, that has a branch `main` and a tag `v1`."""
    c1 = hub.commit("acme/chk", {"config.json": b'{"v": 1}'})
    hub.tag("acme/chk", "v1", c1)
    data = tmp_path / "data"
    sync(hub, "acme/chk", data)
    s = proxy_server(data, hub)
    try:
        assert raw(s.url, "GET", CHK).status == 200
        hub.reset_counters()
        yield s, c1
    finally:
        s.stop()


CHK = "/api/mirror/models/acme/chk/check-update"
BAD_REVISIONS = [
    "%FF",                     # not UTF-8
    "%C3%28",                  # an invalid UTF-8 sequence
    "%ED%A0%80",               # an encoded surrogate
    "..",
    "a..b",
    "%2E%2E",
    "..%2F..%2Fetc",
    "refs%2Fheads%2F..%2Fmain",
    "%00",
    "main%00",
    "ma%0Ain",
    "ma%0D%0AX-Injected:%201",
    "%7F",
    "%2F",
    "main%2F",
    "a%2F%2Fb",
    ".hidden",
    "x.lock",
    "%40%7B1%7D",
    "%40",
    "a~1",
    "a%5E",
    "a:b",
    "a%20b",
    "a%5Cb",
    "%2A",
    "%5B",
    "a" * 256,                 # longer than any revision
    "a" * 7000,                # a huge query string, still under aiohttp's 8190-byte request line
    "%E2%82%AC" * 800,         # many multi-byte characters
]


def test_check_update_bad_revisions_are_a_clean_400(hub: FakeHub, chk: tuple[Server, str]) -> None:
    s, _ = chk
    wrong: list[tuple[str, object]] = []
    for rev in BAD_REVISIONS:
        r = raw(s.url, "GET", f"{CHK}?revision={rev}")
        if r.status != 400 or not is_json_error(r) or "x-injected" in r.headers:
            wrong.append((rev[:80], r))
    assert wrong == [], "\n".join(f"{q!r}: {r!r}" for q, r in wrong)
    assert hub.calls == [], hub.calls  # refused before anything is asked
    # a request line over aiohttp's limit is refused by the HTTP parser itself: a 400, never a 5xx
    # (its body is aiohttp's plain text, not the JSON error of the routes)
    for n in (9_000, 20_000, 100_000):
        r = raw(s.url, "GET", f"{CHK}?revision={'a' * n}")
        assert r.status in (400, 414), (n, r)
    # odd queries are answered (an empty or valueless revision is the default branch) or refused, never a 5xx
    for q in ("?", "?&&&", "?revision", "?revision=", "?=main", "?%FF=1", "?x=%FF", "?revision=main&x=" + "y" * 5000,
              "?revision=%", "?revision=%G0", "?revision=%%%", "?revision=HEAD", "?revision=refs%2Fheads%2Fmain"):
        r = raw(s.url, "GET", CHK + q)
        if not (r.status == 200 or (400 <= r.status < 500 and is_json_error(r))):
            wrong.append((q[:80], r))
    assert wrong == [], "\n".join(f"{q!r}: {r!r}" for q, r in wrong)
    assert raw(s.url, "GET", CHK).status == 200  # and the server is fine


def test_check_update_repeated_revision_params_are_a_400(hub: FakeHub, chk: tuple[Server, str]) -> None:
    """`?revision=main&revision=v1` is ambiguous: refused, not answered for one of them."""
    s, _ = chk
    wrong: list[tuple[str, object]] = []
    for q in ("?revision=main&revision=v1", "?revision=v1&revision=main", "?revision=main&revision=nope",
              "?revision=main&revision=..", "?revision=main" + "&revision=main2" * 300):
        r = raw(s.url, "GET", CHK + q)
        if r.status != 400 or not is_json_error(r):
            wrong.append((q[:60], r))
    assert wrong == [], "\n".join(f"{q!r}: {r!r}" for q, r in wrong)
    assert hub.calls == [], hub.calls


# -- B. forwarded headers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A data dir with `acme/hist`: 55 commits (commits pages of 50) and a small tree."""
    from hubmirror.catalog import Catalog
    from hubmirror.ingest import import_folder
    from hubmirror.model.names import RepoRef, RepoType
    from hubmirror.store import LocalBlobStore

    base = tmp_path_factory.mktemp("fwd")
    data = base / "data"
    data.mkdir()
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    catalog.migrate()
    store = LocalBlobStore(data / "blobs")
    src = base / "src"
    commits = []
    for i in range(55):
        if src.exists():
            shutil.rmtree(src)
        (src / "d").mkdir(parents=True)
        (src / "config.json").write_text(json.dumps({"v": i}))
        for j in range(4):
            (src / "d" / f"f{j}.txt").write_text(f"{j}")
        commits.append(import_folder(catalog, store, RepoRef(RepoType.MODEL, "acme/hist"), src,
                                     message=f"commit {i}").commit)
    catalog.close()
    return data, commits


def _copy(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    return dest


def _wait_log(s: Server, marker: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in s.log.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access log line with {marker!r}:\n{s.log.read_text(errors='replace')[-3000:]}")


FORWARDED = {"X-Forwarded-Host": "hub.example.org", "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/hf"}
TREE = "/api/models/acme/hist/tree/main?recursive=true&limit=2"
COMMITS = "/api/models/acme/hist/commits/main"


def test_forwarded_headers_from_anyone_change_nothing_by_default(
    history_data: tuple[Path, list[str]], tmp_path: Path
) -> None:
    data = _copy(history_data[0], tmp_path / "data")
    s = Server(data)
    try:
        for path in (TREE, COMMITS):
            plain = raw(s.url, "GET", path)
            assert plain.status == 200 and plain.headers["link"].startswith(f"<{s.url}{path.split('?')[0]}?"), plain
            for headers in ({"X-Forwarded-Host": "evil.example"}, {"X-Forwarded-Proto": "https"},
                            {"X-Forwarded-Prefix": "/evil"}, {**FORWARDED, "X-Forwarded-Host": "evil.example"},
                            {"X-Forwarded-Host": 'evil.example/x>; rel="next", <http://a'},
                            {"X-Forwarded-Proto": "javascript"}, {"X-Forwarded-Prefix": "/a b>"}):
                r = raw(s.url, "GET", path, headers)
                assert r.status == 200, (headers, r)
                assert r.headers["link"] == plain.headers["link"], (headers, r.headers["link"])
                assert "evil" not in everything(r)
        # the access log names the peer, whatever X-Forwarded-For says
        raw(s.url, "GET", "/api/models/acme/hist/revision/main?marker=untrusted-peer",
            {"X-Forwarded-For": "203.0.113.7"})
        line = _wait_log(s, "marker=untrusted-peer")
        assert "127.0.0.1" in line and "203.0.113.7" not in line, line
    finally:
        s.stop()


def test_forwarded_headers_from_a_trusted_proxy_are_used(
    history_data: tuple[Path, list[str]], tmp_path: Path
) -> None:
    data = _copy(history_data[0], tmp_path / "data")
    s = Server(data, env={"HUBMIRROR_TRUSTED_PROXIES": '["127.0.0.1"]'})
    try:
        for path in (TREE, COMMITS):
            r = raw(s.url, "GET", path, FORWARDED)
            assert r.status == 200, r
            m = re.match(r'<https://hub\.example\.org/hf(/[^>]*)>; rel="next"$', r.headers["link"])
            assert m, r.headers["link"]
            assert m.group(1).startswith(path.split("?")[0] + "?")
            nxt = raw(s.url, "GET", m.group(1), FORWARDED)  # what the proxy forwards, prefix stripped
            assert nxt.status == 200 and nxt.json() and nxt.json() != r.json()
            # without forwarded headers, the server's own URL
            assert raw(s.url, "GET", path).headers["link"].startswith(f"<{s.url}/")
        # a malformed forwarded value from a trusted proxy is a 400 naming the header
        for header, value in (("X-Forwarded-Host", 'evil.example/x>; rel="next", <http://a'),
                              ("X-Forwarded-Host", "evil example"),
                              ("X-Forwarded-Proto", "javascript"),
                              ("X-Forwarded-Prefix", "/hf>; rel=next")):
            r = raw(s.url, "GET", TREE, {**FORWARDED, header: value})
            assert r.status == 400, (header, value, r)
            assert is_json_error(r) and header in r.json()["error"], (header, r.json())
        # the access log names the forwarded client
        raw(s.url, "GET", "/api/models/acme/hist/revision/main?marker=trusted-peer",
            {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
        line = _wait_log(s, "marker=trusted-peer")
        assert "203.0.113.7" in line, line
        assert not re.search(r"\b127\.0\.0\.1 \"GET", line), line
    finally:
        s.stop()


def test_removed_trust_forwarded_headers_key_refuses_to_start(tmp_path: Path) -> None:
    for value in ("true", "false"):
        cfg = tmp_path / f"hm-{value}.toml"
        cfg.write_text(f"trust_forwarded_headers = {value}\n")
        p = subprocess.Popen([*HM, "serve", "--config", str(cfg), "--data", str(tmp_path / "data"),
                              "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"trust_forwarded_headers = {value}: the server started\n{out}\n{err}") from None
        assert p.returncode not in (0, None), (value, out, err)
        assert "trusted_proxies" in err and "trust_forwarded_headers" in err, (value, err)
        assert "Traceback" not in err, err


# -- C. HEAD is the default branch -------------------------------------------------------------


def test_head_revision_is_the_default_branch_for_hosted_repos(server: Server, fixture_data: Fixture) -> None:
    main = fixture_data.commits["main"]
    a = raw(server.url, "GET", "/api/models/acme/tiny/revision/main")
    b = raw(server.url, "GET", "/api/models/acme/tiny/revision/HEAD")
    assert a.status == b.status == 200, b
    assert b.json()["sha"] == a.json()["sha"] == main
    assert b.headers.get("x-repo-commit") == a.headers.get("x-repo-commit")
    for method in ("HEAD", "GET"):
        a = raw(server.url, method, "/acme/tiny/resolve/main/config.json")
        b = raw(server.url, method, "/acme/tiny/resolve/HEAD/config.json")
        assert b.status == 200, b
        assert b.headers["x-repo-commit"] == a.headers["x-repo-commit"] == main
        assert b.headers["etag"] == a.headers["etag"] and b.body == a.body
    assert b.body == fixture_data.files["config.json"]
    a = raw(server.url, "GET", "/api/models/acme/tiny/tree/main?recursive=true")
    b = raw(server.url, "GET", "/api/models/acme/tiny/tree/HEAD?recursive=true")
    assert b.status == 200 and b.json() == a.json(), b
    assert b.headers.get("x-repo-commit") == a.headers.get("x-repo-commit")
    r = raw(server.url, "GET", "/api/models/acme/tiny/tree/HEAD/sub")
    assert r.status == 200 and [e["path"] for e in r.json()] == ["sub/dir"]
    r = raw(server.url, "GET", "/api/datasets/acme/ds/revision/HEAD")
    assert r.status == 200 and r.json()["sha"] == fixture_data.commits["ds"]
    r = raw(server.url, "GET", "/datasets/acme/ds/resolve/HEAD/data/train.csv")
    assert r.status == 200 and r.headers["x-repo-commit"] == fixture_data.commits["ds"]
    r = raw(server.url, "GET", "/tinygpt/resolve/HEAD/config.json")  # a single-segment repo id
    assert r.status == 200 and r.headers["x-repo-commit"] == fixture_data.commits["gpt"]


def test_head_revision_is_the_default_branch_for_pulled_through_repos(hub: FakeHub, tmp_path: Path) -> None:
    cold = hub.commit("acme/cold", {"config.json": b'{"cold": 1}', "sub/a.txt": b"a"})
    warm = hub.commit("acme/warm", {"config.json": b'{"warm": 1}', "sub/a.txt": b"a"})
    hub.commit("acme/warm", {"config.json": b'{"other": 1}'}, branch="HEAD-not")  # a decoy branch
    s = proxy_server(tmp_path / "data", hub)
    try:
        # HEAD first, on a cold mirror (the fake upstream, like an old Hub, knows no "HEAD")
        r = raw(s.url, "GET", "/acme/cold/resolve/HEAD/config.json")
        assert r.status == 200 and r.body == b'{"cold": 1}' and r.headers["x-repo-commit"] == cold, r
        r = raw(s.url, "GET", "/api/models/acme/cold/revision/HEAD")
        assert r.status == 200 and r.json()["sha"] == cold, r
        r = raw(s.url, "GET", "/api/models/acme/cold/tree/HEAD?recursive=true")
        assert r.status == 200 and {e["path"] for e in r.json()} == {"config.json", "sub", "sub/a.txt"}, r
        # main first, then HEAD: the same answers, and HEAD costs the upstream nothing more
        a = {
            "info": raw(s.url, "GET", "/api/models/acme/warm/revision/main"),
            "resolve": raw(s.url, "GET", "/acme/warm/resolve/main/config.json"),
            "tree": raw(s.url, "GET", "/api/models/acme/warm/tree/main?recursive=true"),
        }
        hub.reset_counters()
        b = {
            "info": raw(s.url, "GET", "/api/models/acme/warm/revision/HEAD"),
            "resolve": raw(s.url, "GET", "/acme/warm/resolve/HEAD/config.json"),
            "tree": raw(s.url, "GET", "/api/models/acme/warm/tree/HEAD?recursive=true"),
        }
        for k, main_reply in a.items():
            assert main_reply.status == b[k].status == 200, (k, main_reply, b[k])
            assert b[k].headers.get("x-repo-commit") == main_reply.headers.get("x-repo-commit"), k
            assert b[k].body == main_reply.body, k
        assert b["info"].json()["sha"] == warm and b["resolve"].headers["x-repo-commit"] == warm
        assert hub.calls == [], hub.calls
        assert not any("HEAD" in p for _, p in hub.calls)
    finally:
        s.stop()


# -- C'. the real JavaScript client ------------------------------------------------------------


@pytest.fixture(scope="session")
def hf_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """@huggingface/hub installed from npm, once per session."""
    d = tmp_path_factory.mktemp("npm")
    (d / "package.json").write_text('{"name": "hubmirror-js-test", "private": true}\n')
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed")
    try:
        p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "@huggingface/hub"], cwd=d, check=False,
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"npm install timed out:\n{e.stdout!r}\n{e.stderr!r}")
    if p.returncode != 0 or not (d / "node_modules" / "@huggingface" / "hub").is_dir():
        pytest.fail(f"npm install failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return d


def run_js(hf_js: Path, code: str, **values: str) -> dict[str, object]:
    script = "const hub = require('@huggingface/hub');\nconst crypto = require('crypto');\n"
    script += "".join(f"const {k} = {json.dumps(v)};\n" for k, v in values.items())
    script += f"(async () => {{\n{code}\n}})().catch((e) => {{ console.error(e); process.exit(1); }});\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    p = subprocess.run(["node", "-e", script], check=False, cwd=hf_js, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, f"node failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])  # type: ignore[no-any-return]
    raise AssertionError(f"node printed no result:\n{p.stdout}\n{p.stderr}")


JS_READ = """
const info = await hub.modelInfo({ name: REPO, hubUrl: SERVER, additionalFields: ["sha"] });
const cfg = await hub.downloadFile({ repo: REPO, path: "config.json", hubUrl: SERVER });
const out = { sha: info.sha, name: info.name, config: Buffer.from(await cfg.arrayBuffer()).toString("hex") };
if (LFS) {
  const w = await hub.downloadFile({ repo: REPO, path: LFS, hubUrl: SERVER });
  out.lfs = crypto.createHash("sha256").update(Buffer.from(await w.arrayBuffer())).digest("hex");
}
console.log("@@RESULT@@" + JSON.stringify(out));
"""


def test_javascript_client_reads_a_hosted_repo(hf_js: Path, server: Server, fixture_data: Fixture) -> None:
    out = run_js(hf_js, JS_READ, SERVER=server.url, REPO="acme/tiny", LFS="weights.bin")
    assert out["name"] == "acme/tiny"
    assert out["sha"] == fixture_data.commits["main"]
    assert bytes.fromhex(str(out["config"])) == fixture_data.files["config.json"]
    assert out["lfs"] == hashlib.sha256(fixture_data.files["weights.bin"]).hexdigest()


def test_javascript_client_reads_a_pulled_through_repo(hf_js: Path, hub: FakeHub, tmp_path: Path) -> None:
    w = os.urandom(300_000)
    c1 = hub.commit("acme/js", {"config.json": b'{"js": true}', "model.safetensors": w})
    s = proxy_server(tmp_path / "data", hub)
    try:
        out = run_js(hf_js, JS_READ, SERVER=s.url, REPO="acme/js", LFS="model.safetensors")
        assert out["sha"] == c1
        assert bytes.fromhex(str(out["config"])) == b'{"js": true}'
        assert out["lfs"] == hashlib.sha256(w).hexdigest()
        assert not any("/HEAD" in p for _, p in hub.calls)
    finally:
        s.stop()


def test_check_update_cannot_be_used_to_amplify_upstream_requests(hub: FakeHub, chk: tuple[Server, str]) -> None:
    s, c1 = chk
    # a missing branch asked again and again: one upstream call (remembered for negative_ttl)
    for _ in range(15):
        r = check(s, "acme/chk", "?revision=nope")
        assert r.status == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    assert info_calls(hub, "acme/chk") == 1
    # a commit sha never moves: answered from the catalog, never asked upstream, never listed
    hub.reset_counters()
    old = [hub.commit("acme/chk", {"config.json": f'{{"v": {i}}}'.encode()}) for i in range(3)]
    r = check(s, "acme/chk", f"?revision={c1}")
    assert r.status == 200 and r.json()["update_available"] is False and r.json()["upstream_commit"] == c1
    for sha in old:  # shas the mirror never had
        r = check(s, "acme/chk", f"?revision={sha}")
        assert r.status == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    assert calls_about(hub, "acme/chk") == []
