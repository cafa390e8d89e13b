"""The mirror tests/test_ui.py looks at: a catalog filled directly through the Catalog's API
(no HTTP imports: a thousand repos and a 10,000-file folder are recorded in one transaction),
users and tokens made with ops/, a fake upstream Hub for the one mirror the admin syncs, and a
real `hubmirror serve` on it. Also the browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import backends
import pytest
from fakes.hub import FakeHub
from helpers import ROOT, Server

from hubmirror import ops
from hubmirror.catalog.lifecycle import ImportedRepo
from hubmirror.catalog.schema import utcnow
from hubmirror.ingest import import_folder
from hubmirror.model.entries import Commit, Entry, with_directories
from hubmirror.model.mirror import MirrorSpec
from hubmirror.model.names import RepoRef, RepoType

ARTIFACTS = ROOT / "test-artifacts" / "ui"
BULK = 1000
BIG_FOLDER = 10_000
ACTOR = ops.Actor("test:setup", "local")

HOSTILE_README = b"""---
license: mit
tags: [tiny]
---
# Tiny model

<script>document.title = "pwned-by-script"</script>
<img src="x" onerror="document.title = 'pwned-by-img'">

[click me](javascript:document.title='pwned-by-link') and [again](JaVaScRiPt:alert(1))
<a href="javascript:alert(2)">raw link</a> [data](data:text/html,<script>alert(3)</script>)

See [the config](config.json) and ![a picture](sub/dir/pic.png).

| column | value |
|--------|-------|
| a      | 1     |
"""

TINY = {
    ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
    "README.md": HOSTILE_README,
    "config.json": b'{"model_type": "bert", "hidden": 128}\n',  # 38 bytes
    "sub/dir/nested.txt": b"nested file\n",
    "weights.bin": b"\x00" * 2_500_000,  # 2.5 MB, LFS
}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Site:
    hub: FakeHub
    data: Path
    server: Server
    tokens: dict[str, str]  # who -> token (root: admin, bob: read, carol: read in group "secret")
    upstream_commit: str  # acme/upmodel@main on the fake Hub
    expected: dict[str, set[str]] = field(default_factory=dict)  # flag -> bulk repo ids with it
    visible_total: int = 0  # repos anonymous readers see (all but secret/model)
    commits: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def _write(root: Path, files: dict[str, bytes]) -> None:
    if root.exists():
        shutil.rmtree(root)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _commit(name: str, title: str, when: datetime) -> Commit:
    return Commit(sha=sha1(name), title=title, message=title, author="test", date=when)


def build(base: Path, hub: FakeHub) -> tuple[Path, dict[str, str], dict[str, set[str]], dict[str, str], int]:
    """Fill a data dir; returns (data, tokens, expected bulk flags, commits, repos anonymous readers see)."""
    data = base / "data"
    catalog = backends.current().catalog(data)
    store = backends.current().store(data)
    commits: dict[str, str] = {}
    try:
        for user, groups in (("root", []), ("bob", []), ("carol", ["secret"])):
            ops.add_user(catalog, ACTOR, user, groups)
        tokens = {
            "root": ops.create_token(catalog, ACTOR, "root-admin", "root", "admin").token,
            "bob": ops.create_token(catalog, ACTOR, "bob-read", "bob", "read").token,
            "carol": ops.create_token(catalog, ACTOR, "carol-read", "carol", "read").token,
        }
        src = base / "src"

        def imp(ref: RepoRef, files: dict[str, bytes], message: str) -> str:
            _write(src, files)
            return import_folder(catalog, store, ref, src, message=message).commit

        tiny = RepoRef(RepoType.MODEL, "acme/tiny")
        commits["tiny-v1"] = imp(tiny, {**TINY, "config.json": b'{"model_type": "bert", "hidden": 64}\n'}, "first")
        row = catalog.get_repo(tiny)
        assert row is not None
        catalog.set_ref(row, "refs/tags/v1.0", commits["tiny-v1"], reason="test")
        commits["tiny"] = imp(tiny, TINY, "second version")
        imp(RepoRef(RepoType.DATASET, "acme/corpus"), {"README.md": b"# corpus\n", "train.csv": b"a,b\n1,2\n"}, "data")
        secret = RepoRef(RepoType.MODEL, "secret/model")
        imp(secret, {"README.md": b"# top secret\n", "config.json": b"{}\n"}, "secret")
        srow = catalog.get_repo(secret)
        assert srow is not None
        catalog.set_visibility(srow, private=True, gated=None)
        shutil.rmtree(src)

        # a thousand repos and a folder of 10,000 files, in one transaction
        now = datetime.now(UTC)
        imported = []
        for i in range(BULK):
            origin = ("mirror", "proxy", "local")[i % 3]
            c = _commit(f"bulk{i}", f"bulk {i}", now - timedelta(minutes=i))
            readme = Entry("README.md", "file", sha1(f"readme{i}"), 100 + i, sha256(f"readme{i}"))
            imported.append(ImportedRepo(RepoRef(RepoType.MODEL, f"bulk/r{i:04d}"), origin, [(c, [readme])],
                                         {"refs/heads/main": c.sha}))
        files = [Entry(f"data/f{i:05d}.txt", "file", sha1(f"f{i}"), 1000 + i, sha256(f"f{i}")) for i in range(BIG_FOLDER)]
        files.append(Entry("README.md", "file", sha1("big-readme"), 10, sha256("big-readme")))
        entries, tree = with_directories(files)
        big = Commit(sha=sha1("big"), title="ten thousand files", date=now, tree=tree)
        imported.append(ImportedRepo(RepoRef(RepoType.MODEL, "big/files"), "local", [(big, entries)],
                                     {"refs/heads/main": big.sha}))
        catalog.record_import(imported, reason="test", action="test-import")
        commits["big"] = big.sha

        rows = {r.ref.repo_id: r for r in catalog.list_repos()}
        expected: dict[str, set[str]] = {k: set() for k in ("gone", "pinned", "failing", "stale", "mirrored",
                                                           "pulled", "hosted")}
        for i in range(BULK):
            rid = f"bulk/r{i:04d}"
            expected[("mirrored", "pulled", "hosted")[i % 3]].add(rid)
            if i % 50 == 7:
                catalog.mark_gone(rows[rid].pk, "RepoNotFound upstream")
                expected["gone"].add(rid)
            if i % 40 == 3:
                catalog.pin(rows[rid].pk, sha1(f"bulk{i}"), "main", "kept")
                expected["pinned"].add(rid)
            if i % 3 == 0 and i < 300:  # a hundred declared mirrors, disabled: the scheduler leaves them alone
                ref = RepoRef(RepoType.MODEL, rid)
                catalog.upsert_mirror(MirrorSpec(repo=rid, enabled=False, schedule="1d"), "cli")
                stale = i % 9 == 0
                upstream = {"main": sha1(f"upstream{i}") if stale else sha1(f"bulk{i}")}
                failing = i % 27 == 0
                catalog.update_mirror_state(ref, upstream=upstream, last_check_at=utcnow(),
                                            last_error="upstream answered 500" if failing else None,
                                            last_error_at=utcnow() if failing else None)
                if stale:
                    expected["stale"].add(rid)
                if failing:
                    expected["failing"].add(rid)
        # a tag kept here while the upstream re-pointed it
        r0 = rows["bulk/r0000"]
        catalog.set_ref(r0, "refs/tags/v1", sha1("bulk0"), reason="test")
        catalog.audit("tag-repointed-upstream", r0.ref, tag="refs/tags/v1", mirrored=sha1("bulk0"),
                      upstream=sha1("elsewhere"))

        # the mirror the admin syncs from the UI: declared, never due by itself
        up = RepoRef(RepoType.MODEL, "acme/upmodel")
        catalog.upsert_mirror(MirrorSpec(repo="acme/upmodel", schedule="1d"), "cli")
        catalog.update_mirror_state(up, next_run_at=utcnow() + timedelta(days=30))
        visible = 3 + BULK  # acme/tiny, acme/corpus, big/files and the bulk (not secret/model)
    finally:
        catalog.close()
    return data, tokens, expected, commits, visible


def start(base: Path) -> Site:
    hub = FakeHub(page_size=50).start()
    upstream = hub.commit("acme/upmodel", {"README.md": b"# upstream model\n", "config.json": b'{"up": 1}\n',
                                           "w.bin": os.urandom(5000)})
    data, tokens, expected, commits, visible = build(base, hub)
    cfg = base / "hubmirror.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
scheduler_tick = 0.5
upstream_backoff = 0.01
trusted_proxies = ["127.0.0.1/32"]

[[access.rules]]
repos = ["secret/*"]
read = ["group:secret"]
''')
    server = Server(data, "--config", str(cfg))
    return Site(hub, data, server, tokens, upstream, expected, visible, commits)


def chromium() -> str:
    """Debian's Chromium (apt-get install chromium): Playwright cannot download its own here."""
    path = os.environ.get("HUBMIRROR_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        # a missing tool fails these tests, it does not skip them: a CI that lacks it must not pass
        pytest.fail("the UI tests need Chromium: apt-get install chromium")
    return path


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
