"""The catalog's conformance suite: every behaviour the rest of the package relies on, run once on
SQLite and once on PostgreSQL (DESIGN.md principle 3).

The PostgreSQL database of each test is new, and made by a cluster whose default collation is
ICU en-US (tests/services.py): it does not sort by bytes, as many real servers do not, so the
ordering and range tests below meet the problem they guard against. A case that only one database
can show (a deadlock, a dropped connection, SQLite's busy timeout) is written for that database
alone, by name; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from hubmirror.catalog import (
    Catalog,
    CatalogBusy,
    CatalogUnavailable,
    RefUpdate,
    RepoRow,
    schema,
)
from hubmirror.catalog import lifecycle as catalog_lifecycle
from hubmirror.catalog.schema import utcnow
from hubmirror.errors import (
    ConfigError,
    Conflict,
    InsufficientStorage,
    NotFound,
    RevisionNotFound,
)
from hubmirror.lifecycle.gc import commits_to_drop
from hubmirror.model.access import Role
from hubmirror.model.entries import Commit, Entry, with_directories
from hubmirror.model.mirror import MirrorSpec
from hubmirror.model.names import RepoRef, RepoType

T = TypeVar("T")
BACKENDS = ["sqlite", "postgresql"]
MODEL = RepoType.MODEL


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty database of the backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def open_catalog(db_url: str) -> Iterator[Callable[[], Catalog]]:
    """More catalogs on the same database, each with its own connections (as other processes or
    replicas would have); all closed at the end."""
    opened: list[Catalog] = []

    def make() -> Catalog:
        c = Catalog(db_url)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def catalog(open_catalog: Callable[[], Catalog]) -> Catalog:
    c = open_catalog()
    c.migrate()
    c.migrate()  # idempotent
    return c


@pytest.fixture
def pg_catalog(postgres_database: str) -> Iterator[Catalog]:
    """For a case only PostgreSQL has."""
    c = Catalog(postgres_database)
    c.migrate()
    yield c
    c.close()


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Iterator[Catalog]:
    """For a case only SQLite has."""
    c = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    c.migrate()
    yield c
    c.close()


def at_once(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """fn(0..n-1) in n threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return fn(i)
        except BaseException as e:  # noqa: BLE001 - returned for the test to look at
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def raised(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def count(catalog: Catalog, table: str) -> int:
    with catalog.engine.connect() as c:
        return int(c.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar() or 0)


def sha(text: str, n: int = 40) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def commit(name: str, parents: tuple[str, ...] = (), ts: float = 1_700_000_000.0, **kw: Any) -> Commit:
    return Commit(sha(name), [sha(p) for p in parents], f"title {name}", f"message {name}", "me",
                  datetime.fromtimestamp(ts, UTC), **kw)


def files(*specs: tuple[str, str | None]) -> list[Entry]:
    """File entries (path, blob sha256 or None), with their folders."""
    out = [Entry(p, "file", sha("oid " + p), len(p), s) for p, s in specs]
    return with_directories(out)[0]


def by_bytes(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: p.encode("utf-8"))


# -- schema -----------------------------------------------------------------------------------------


def test_migrations_reach_head_twice_and_match_schema_py(catalog: Catalog, backend: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config as AlembicConfig
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from hubmirror.catalog.schema import metadata

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("hubmirror.catalog") / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    catalog.migrate()
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert catalog.dialect == backend


def test_postgresql_columns_sort_by_bytes_and_times_are_naive(pg_catalog: Catalog) -> None:
    """SQLite compares text with memcmp and has no column types to check."""
    catalog = pg_catalog
    q = sa.text("SELECT table_name, column_name, data_type, collation_name FROM information_schema.columns "
                "WHERE table_schema = 'public'")
    with catalog.engine.connect() as c:
        cols = {(r.table_name, r.column_name): (r.data_type, r.collation_name) for r in c.execute(q)}
    bytewise = {("entries", "path"), ("entries", "parent"), ("repos", "repo_id"), ("mirrors", "repo_id"),
                ("refs", "name"), ("api_cache", "key"), ("users", "name"), ("tokens", "name"),
                ("group_members", "group")}
    for col in bytewise:
        assert cols[col][1] == "C", col
    assert cols[("repos", "created_at")][0] == "timestamp without time zone"
    assert cols[("repos", "private")][0] == "boolean"
    assert cols[("api_cache", "body")][0] == "bytea"
    with catalog.engine.connect() as c:
        assert c.execute(sa.text("SHOW TimeZone")).scalar() == "UTC"


def test_several_processes_migrate_a_new_database_at_once(open_catalog: Callable[[], Catalog]) -> None:
    catalogs = [open_catalog() for _ in range(4)]
    results = at_once(4, lambda i: catalogs[i].migrate())
    assert raised(results) == []
    assert catalogs[0].list_repos() == []


def test_urls_name_their_driver() -> None:
    assert Catalog("postgresql://u:p@db.example:5433/hub").url == "postgresql+psycopg://u:p@db.example:5433/hub"
    assert Catalog("postgres://u@db.example/hub").engine.dialect.driver == "psycopg"
    assert Catalog("postgresql+psycopg://u@db.example/hub").dialect == "postgresql"
    for bad in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db", "not a url"):
        with pytest.raises(ConfigError):
            Catalog(bad)


# -- repos -----------------------------------------------------------------------------------------


def test_ensure_repo_from_many_threads_and_processes_makes_one_row(
        catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    others = [open_catalog() for _ in range(4)]
    ref = RepoRef(MODEL, "acme/race")
    rows = at_once(16, lambda i: others[i % 4].ensure_repo(ref, "proxy"))
    assert raised(rows) == []
    assert len({r.pk for r in rows if isinstance(r, RepoRow)}) == 1
    assert count(catalog, "repos") == 1
    assert catalog.ensure_repo(ref, "local").origin == "proxy"  # the first one's origin stands


def test_repo_ids_are_case_sensitive_and_listed_in_byte_order(catalog: Catalog) -> None:
    ids = ["acme/bc", "acme/b_c", "acme/bC", "acme/b0", "acme/b.c", "acme/b-c", "Acme/z", "acme/B"]
    for i in ids:
        catalog.ensure_repo(RepoRef(MODEL, i))
    catalog.ensure_repo(RepoRef(RepoType.DATASET, "acme/bc"))
    assert catalog.get_repo(RepoRef(MODEL, "ACME/BC")) is None
    assert catalog.get_repo(RepoRef(MODEL, "acme/bC")).ref.repo_id == "acme/bC"  # type: ignore[union-attr]
    listed = [(r.ref.repo_type.value, r.ref.repo_id) for r in catalog.list_repos()]
    assert listed == [("dataset", "acme/bc")] + [("model", i) for i in by_bytes(ids)]


def test_visibility_and_origin(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/v"))
    assert (repo.private, repo.gated, repo.origin) == (False, None, "local")
    repo = catalog.set_visibility(repo, private=True, gated="manual")
    assert (repo.private, repo.gated) == (True, "manual")
    assert catalog.set_origin(repo, "mirror").origin == "mirror"
    assert catalog.get_repo(repo.ref) == RepoRow(repo.pk, repo.ref, repo.created_at, True, "manual", "mirror")
    assert repo.created_at.tzinfo is None and abs(repo.created_at - utcnow()) < timedelta(minutes=1)


# -- commits, refs, history -------------------------------------------------------------------------


def test_a_commit_with_entries_and_refs_is_recorded_in_one_transaction(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/c"))
    when = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=-5)))
    c1 = Commit(sha("c1"), [], "tïtle ✓", "a\nmultiline\nmessage", "x" * 300, when, tree=sha("tree"))
    entries = files(("README.md", None), ("w/model.bin", sha("blob", 64)))
    catalog.record_commit(repo, c1, entries, [RefUpdate("refs/heads/main", c1.sha), RefUpdate("refs/tags/v1", c1.sha)],
                          reason="import")
    got = catalog.get_commit(repo, c1.sha)
    assert got is not None
    assert got.date == when and got.date.tzinfo is not None and got.date.microsecond == 123456
    assert (got.title, got.message, got.tree, got.parents) == (c1.title, c1.message, c1.tree, [])
    assert got.author == "x" * 200  # cut to its column, on every database
    assert catalog.refs(repo) == {"refs/heads/main": c1.sha, "refs/tags/v1": c1.sha}
    assert [e.path for e in catalog.list_entries(repo, c1.sha, recursive=True)] == ["README.md", "w", "w/model.bin"]
    # recording a known commit again only moves refs: its entries stay as they were
    catalog.record_commit(repo, c1, files(("other", None)), [RefUpdate("refs/heads/dev", c1.sha)])
    assert [e.path for e in catalog.list_entries(repo, c1.sha, recursive=True)] == ["README.md", "w", "w/model.bin"]
    assert catalog.refs(repo)["refs/heads/dev"] == c1.sha
    # deleting a ref
    catalog.set_ref(repo, "refs/heads/dev", None, reason="gone")
    assert "refs/heads/dev" not in catalog.refs(repo)
    assert [(h["old_commit"], h["new_commit"], h["reason"]) for h in catalog.ref_history(repo, "refs/heads/dev")] == [
        (None, c1.sha, ""), (c1.sha, None, "gone")]


def test_compare_and_swap_refuses_a_moved_ref_and_rolls_back_everything(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/cas"))
    a, b, c = commit("a"), commit("b", ("a",)), commit("c", ("a",))
    catalog.record_commit(repo, a, [], [RefUpdate("refs/heads/main", a.sha, expect=None)])
    catalog.record_commit(repo, b, files(("f", None)), [RefUpdate("refs/heads/main", b.sha, expect=a.sha)])
    with pytest.raises(Conflict):
        catalog.record_commit(repo, c, files(("g", None)), [RefUpdate("refs/heads/other", c.sha),
                                                            RefUpdate("refs/heads/main", c.sha, expect=a.sha)])
    assert catalog.get_commit(repo, c.sha) is None
    assert catalog.list_entries(repo, c.sha) == []
    assert catalog.refs(repo) == {"refs/heads/main": b.sha}
    with pytest.raises(Conflict):  # expect=None: only if the ref does not exist
        catalog.record_commit(repo, c, [], [RefUpdate("refs/heads/main", c.sha, expect=None)])


def test_compare_and_swap_between_concurrent_writers_lets_exactly_one_win(
        catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/race"))
    base = commit("base")
    catalog.record_commit(repo, base, [], [RefUpdate("refs/heads/main", base.sha)])
    writers = [open_catalog() for _ in range(6)]
    tries = [commit(f"try {i}", ("base",)) for i in range(6)]
    results = at_once(6, lambda i: writers[i].record_commit(
        repo, tries[i], files((f"file{i}", None)), [RefUpdate("refs/heads/main", tries[i].sha, expect=base.sha)]))
    errors = raised(results)
    assert len(errors) == 5 and all(isinstance(e, Conflict) for e in errors), errors
    winner = next(t for t, r in zip(tries, results) if not isinstance(r, BaseException))
    assert catalog.resolve(repo, "main") == winner.sha
    assert [(h["old_commit"], h["new_commit"]) for h in catalog.ref_history(repo, "refs/heads/main")] == [
        (None, base.sha), (base.sha, winner.sha)]
    assert {c for _r, _o, c in catalog.all_commits()} == {base.sha, winner.sha}  # the losers rolled back


def test_concurrent_creations_of_a_ref_let_one_win(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/create"))
    writers = [open_catalog() for _ in range(6)]
    tries = [commit(f"new {i}") for i in range(6)]
    results = at_once(6, lambda i: writers[i].record_commit(
        repo, tries[i], [], [RefUpdate("refs/heads/new", tries[i].sha, expect=None)]))
    errors = raised(results)
    assert len(errors) == 5 and all(isinstance(e, Conflict) for e in errors), errors
    assert len(catalog.ref_history(repo, "refs/heads/new")) == 1


def test_concurrent_ref_moves_leave_a_consistent_history(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    """Without compare-and-swap every move lands, and the ref log is one chain: each move's old
    commit is the previous move's new one (no move read a stale ref)."""
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/moves"))
    writers = [open_catalog() for _ in range(6)]
    shas = [commit(f"m{i}") for i in range(6)]
    for s in shas:
        catalog.record_commit(repo, s, [])
    results = at_once(6, lambda i: [writers[i].set_ref(repo, "refs/heads/main", shas[(i + k) % 6].sha) for k in range(4)])
    assert raised(results) == []
    hist = catalog.ref_history(repo, "refs/heads/main")
    assert hist[0]["old_commit"] is None
    for prev, nxt in itertools.pairwise(hist):
        assert nxt["old_commit"] == prev["new_commit"] != nxt["new_commit"]
    assert catalog.refs(repo)["refs/heads/main"] == hist[-1]["new_commit"]


def test_the_same_commit_recorded_at_once_is_recorded_once(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/same"))
    c = commit("same")
    entries = files(*[(f"d{i // 10}/f{i}", sha(f"b{i}", 64)) for i in range(50)])
    writers = [open_catalog() for _ in range(6)]
    results = at_once(6, lambda i: writers[i].record_commit(repo, c, entries, [RefUpdate("refs/heads/main", c.sha)]))
    assert raised(results) == []
    assert count(catalog, "commits") == 1 and count(catalog, "entries") == len(entries)
    assert len(catalog.ref_history(repo, "refs/heads/main")) == 1


def test_resolve_log_and_titles(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "a/b"))
    a, b, c = commit("a", ts=1), commit("b", ("a",), ts=2), commit("c", ("b",), ts=3)
    catalog.record_commit(repo, a, [], [RefUpdate("refs/heads/main", a.sha)])
    catalog.record_commit(repo, b, [], [RefUpdate("refs/heads/main", b.sha), RefUpdate("refs/tags/v1", a.sha)])
    catalog.record_commit(repo, c, [], [RefUpdate("refs/pr/1", c.sha), RefUpdate("refs/heads/Main", c.sha)])
    assert catalog.resolve(repo, "main") == b.sha
    assert catalog.resolve(repo, "Main") == c.sha  # refs are case-sensitive
    assert catalog.resolve(repo, "refs/heads/main") == b.sha
    assert catalog.resolve(repo, "v1") == a.sha
    assert catalog.resolve(repo, "refs/pr/1") == c.sha
    assert catalog.resolve(repo, a.sha) == a.sha
    for missing in ("MAIN", "c" * 40, "nope", a.sha.upper()):
        with pytest.raises(RevisionNotFound):
            catalog.resolve(repo, missing)
    assert [x.sha for x in catalog.log(repo, c.sha)] == [c.sha, b.sha, a.sha]
    assert set(catalog.commit_titles(repo, [a.sha, c.sha, "0" * 40])) == {a.sha, c.sha}
    hist = catalog.ref_history(repo)
    assert [h["name"] for h in hist] == ["refs/heads/main", "refs/heads/main", "refs/tags/v1", "refs/pr/1",
                                         "refs/heads/Main"]
    assert all(h["at"].tzinfo is None for h in hist)


# -- tree listings --------------------------------------------------------------------------------

TRICKY = [
    "A", "B", "Z", "a b", "a-b", "a.txt", "a0", "a~", "b", "z", "é", "Ä/x", "日本/語.txt", "🤗.md", "e\u0301",
    "a/B", "a/b/c.txt", "a/b/C.txt", "a/b/ space", "a/b-c", "a/b0", "a/b.txt", "a/ z", "a/~", "a/é", "a/c/d/e.txt",
    "a/c/D", "a/_x", "a/-x", "a/%41", "a/#1",
]


@pytest.fixture
def tricky(catalog: Catalog) -> tuple[Catalog, RepoRow, str, list[Entry]]:
    repo = catalog.ensure_repo(RepoRef(RepoType.DATASET, "acme/tricky"))
    entries, tree = with_directories([Entry(p, "file", sha("oid " + p), 1, sha(p, 64)) for p in TRICKY])
    c = Commit(sha("tricky"), tree=tree)
    catalog.record_commit(repo, c, entries, [RefUpdate("refs/heads/main", c.sha)])
    return catalog, repo, c.sha, entries


def test_tree_listings_are_in_byte_order(tricky: tuple[Catalog, RepoRow, str, list[Entry]]) -> None:
    catalog, repo, c, entries = tricky
    paths = [e.path for e in entries]

    def listed(**kw: Any) -> list[str]:
        return [e.path for e in catalog.list_entries(repo, c, **kw)]

    def below(folder: str) -> list[str]:
        return by_bytes([p for p in paths if p.startswith(folder + "/")])

    assert listed() == by_bytes([p for p in paths if "/" not in p])
    assert listed(under="a") == by_bytes([p for p in paths if p.startswith("a/") and p.count("/") == 1])
    assert listed(recursive=True) == by_bytes(paths)
    for folder in ("a", "a/b", "a/c", "Ä", "日本"):
        assert listed(under=folder, recursive=True) == below(folder), folder
    # "a/b" is not a prefix of "a/b-c", "a/b0", "a/b.txt"
    assert set(listed(under="a/b", recursive=True)) == {"a/b/c.txt", "a/b/C.txt", "a/b/ space"}
    assert listed(under="a", recursive=True, files_only=True) == [p for p in below("a")
                                                                  if p not in ("a/b", "a/c", "a/c/d")]
    assert listed(under="nothing", recursive=True) == [] and listed(under="A") == []


def test_tree_pages_with_the_after_cursor(tricky: tuple[Catalog, RepoRow, str, list[Entry]]) -> None:
    catalog, repo, c, _entries = tricky
    for under, recursive in (("", True), ("a", True), ("", False), ("a", False), ("a/b", True)):
        whole = [e.path for e in catalog.list_entries(repo, c, under=under, recursive=recursive)]
        for size in (1, 3, 7):
            pages: list[str] = []
            after: str | None = None
            while True:
                page = catalog.list_entries(repo, c, under=under, recursive=recursive, after=after, limit=size)
                pages += [e.path for e in page]
                if len(page) < size:
                    break
                after = page[-1].path
            assert pages == whole, (under, recursive, size)
    # a cursor that names no entry still pages from where it would sort
    assert [e.path for e in catalog.list_entries(repo, c, recursive=True, after="a/b", limit=4)] == [
        "a/b-c", "a/b.txt", "a/b/ space", "a/b/C.txt"]  # "-" 0x2D, "." 0x2E, "/" 0x2F
    assert [e.path for e in catalog.list_entries(repo, c, after="a.txt0", limit=2)] == ["a0", "a~"]


def test_entries_by_path(tricky: tuple[Catalog, RepoRow, str, list[Entry]]) -> None:
    catalog, repo, c, entries = tricky
    want = ["a/b/C.txt", "é", "Z", "a", "missing", "e\u0301", "A"]
    random.Random(1).shuffle(want)
    got = catalog.get_entries(repo, c, want)
    assert [e.path for e in got] == by_bytes([p for p in want if p != "missing"])
    assert catalog.get_entry(repo, c, "A") == next(e for e in entries if e.path == "A")
    assert catalog.get_entry(repo, c, "a.TXT") is None
    assert catalog.get_entry(repo, c, "e\u0301") is not None and catalog.get_entry(repo, c, "\u00e9") is not None
    assert catalog.get_entry(repo, c, "a").type == "directory"  # type: ignore[union-attr]
    many = [f"p{i}" for i in range(1200)] + ["A"]
    assert [e.path for e in catalog.get_entries(repo, c, many)] == ["A"]


def test_blob_lookups_by_git_oid(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/oids"))
    regular = [Entry(f"f{i}", "file", sha(f"oid{i}"), 3, None) for i in range(600)]
    lfs = Entry("big.bin", "file", sha("pointer"), 10**10, sha("big", 64), lfs=True, pointer_size=134)
    catalog.record_commit(repo, commit("oids"), regular + [lfs])
    assert catalog.sha256_for_oid(sha("oid1")) is None
    catalog.fill_sha256(sha("oid1"), sha("content1", 64))
    assert catalog.sha256_for_oid(sha("oid1")) == sha("content1", 64)
    catalog.fill_sha256(sha("pointer"), sha("other", 64))  # never overwrites an LFS entry's sha256
    assert catalog.sha256_for_oid(sha("pointer")) is None
    for i in range(0, 600, 2):
        catalog.fill_sha256(sha(f"oid{i}"), sha(f"content{i}", 64))
    got = catalog.sha256_for_oids(sha(f"oid{i}") for i in range(600))
    assert got == {sha(f"oid{i}"): sha(f"content{i}", 64) for i in range(600) if i % 2 == 0 or i == 1}
    big = catalog.get_entry(repo, sha("oids"), "big.bin")
    assert big is not None and big.size == 10**10 and big.lfs and big.pointer_size == 134


# -- pins, audit, upstream gone -------------------------------------------------------------------------


def test_pins(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/p"))
    other = catalog.ensure_repo(RepoRef(MODEL, "Acme/p"))
    a, b = commit("a"), commit("b")
    for c in (a, b):
        catalog.record_commit(repo, c, [])
    catalog.record_commit(other, a, [])
    assert catalog.pin(repo.pk, a.sha, "main", "release 1")
    assert not catalog.pin(repo.pk, a.sha, "v1", "")  # a note left out keeps the note
    assert not catalog.pin(repo.pk, a.sha, "v1", "kept for audit")
    writers = [open_catalog() for _ in range(4)]
    results = at_once(8, lambda i: writers[i % 4].pin(repo.pk, b.sha, "dev", f"note {i}"))
    assert sorted(r for r in results if isinstance(r, bool)) == [False] * 7 + [True]
    catalog.pin(other.pk, a.sha, "main", "")
    pins = catalog.pins()
    assert [(p["repo_id"], p["commit"], p["revision"]) for p in pins] == [
        ("Acme/p", a.sha, "main"), ("acme/p", a.sha, "v1"), ("acme/p", b.sha, "dev")]
    assert pins[1]["note"] == "kept for audit" and pins[1]["created_at"].tzinfo is None
    assert catalog.pinned_commits() == {(repo.pk, a.sha), (repo.pk, b.sha), (other.pk, a.sha)}
    assert catalog.unpin(repo.pk, a.sha) and not catalog.unpin(repo.pk, a.sha)


def test_audit_with_actor_client_since_and_limit(catalog: Catalog) -> None:
    ref = RepoRef(MODEL, "acme/audited")
    catalog.audit("sync", ref, actor="cli:alice", client="local", revision="main", n=1)
    catalog.audit("gc", None, actor="x" * 300, client="y" * 150, when=datetime(2024, 1, 1))
    time.sleep(0.01)
    cut = utcnow()
    time.sleep(0.01)
    catalog.audit("sync", ref, actor="user:bob (token ci)", client="10.0.0.7", revision="dev")
    catalog.audit("pin", RepoRef(MODEL, "acme/Audited"))
    events = catalog.audit_events()
    assert [e["action"] for e in events] == ["sync", "gc", "sync", "pin"]
    assert events[0]["detail"] == {"revision": "main", "n": 1} and events[0]["actor"] == "cli:alice"
    assert events[1]["actor"] == "x" * 200 and events[1]["client"] == "y" * 100
    assert events[1]["detail"] == {"when": "2024-01-01 00:00:00"} and events[1]["repo_id"] is None
    assert [e["detail"].get("revision") for e in catalog.audit_events(ref)] == ["main", "dev"]
    assert [e["action"] for e in catalog.audit_events(action="sync")] == ["sync", "sync"]
    assert [e["action"] for e in catalog.audit_events(since=cut)] == ["sync", "pin"]
    aware = cut.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=9, minutes=30)))
    assert [e["action"] for e in catalog.audit_events(since=aware)] == ["sync", "pin"]
    assert [e["action"] for e in catalog.audit_events(limit=2)] == ["sync", "pin"]
    assert [e["detail"].get("n") for e in catalog.audit_events(ref, limit=5)] == [1, None]
    assert catalog.audit_events(limit=0) == []
    assert all(e["at"].tzinfo is None for e in events)


def test_repos_gone_upstream(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/gone"))
    writers = [open_catalog() for _ in range(4)]
    results = at_once(4, lambda i: writers[i].mark_gone(repo.pk, "404 " + "x" * 2000))
    assert sorted(r for r in results if isinstance(r, bool)) == [False, False, False, True]
    (since, message), = catalog.gone().values()
    assert since.tzinfo is None and len(message) == 1000
    catalog.clear_gone(repo.pk)
    assert catalog.gone() == {} and catalog.mark_gone(repo.pk, "again")


# -- mirrors and sync runs ------------------------------------------------------------------------------


def test_mirrors(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    spec = MirrorSpec(repo="acme/m", revisions=["main"], schedule="1h")
    catalog.upsert_mirror(spec, "cli")
    catalog.upsert_mirror(spec.model_copy(update={"revisions": ["main", "v*"], "frozen": True}), "config")
    (row,) = catalog.list_mirrors()
    assert row.spec.revisions == ["main", "v*"] and row.spec.frozen and row.source == "config"
    writers = [open_catalog() for _ in range(4)]
    race = MirrorSpec(repo="acme/race")
    assert raised(at_once(8, lambda i: writers[i % 4].upsert_mirror(race, "cli"))) == []
    for name in ("acme/M", "acme/m-2", "Zed/x"):
        catalog.upsert_mirror(MirrorSpec(repo=name), "cli")
    assert [m.spec.repo for m in catalog.list_mirrors()] == by_bytes(["acme/m", "acme/race", "acme/M", "acme/m-2",
                                                                      "Zed/x"])
    ref = spec.ref
    plus5 = timezone(timedelta(hours=5))
    catalog.update_mirror_state(ref, next_run_at=datetime(2030, 1, 1, 5, 0, 0, 1, tzinfo=plus5),
                                last_check_at=datetime(2029, 12, 31, 23, 0), upstream={"main": "a" * 40},
                                last_error="boom", last_error_at=datetime(2029, 12, 31, 23, 1))
    m = catalog.get_mirror(ref)
    assert m is not None
    assert m.next_run_at == datetime(2030, 1, 1, 0, 0, 0, 1)  # naive UTC
    assert m.upstream == {"main": "a" * 40} and m.last_error == "boom"
    assert catalog.get_mirror(RepoRef(MODEL, "ACME/m")) is None
    catalog.prune_config_mirrors(keep=set())
    assert catalog.get_mirror(ref) is None and catalog.get_mirror(race.ref) is not None
    assert catalog.remove_mirror(race.ref) and not catalog.remove_mirror(race.ref)


def test_sync_runs(catalog: Catalog) -> None:
    ref = RepoRef(MODEL, "acme/runs")
    ids = [catalog.start_run(ref, t) for t in ("cli", "schedule", "webhook")]
    assert ids == sorted(ids)
    catalog.finish_run(ids[0], status="synced", commits={"main": "a" * 40}, files_fetched=3, bytes_fetched=2**40)
    assert catalog.close_interrupted_runs(ref) == 2
    runs = catalog.runs(ref)
    assert [r["id"] for r in runs] == ids[::-1]
    assert runs[-1]["commits"] == {"main": "a" * 40} and runs[-1]["bytes_fetched"] == 2**40
    assert runs[0]["status"] == "interrupted" and runs[0]["commits"] == {}
    assert runs[-1]["finished_at"].tzinfo is None
    assert len(catalog.runs(ref, limit=1)) == 1 and catalog.runs(RepoRef(MODEL, "acme/Runs")) == []


# -- pull-through ----------------------------------------------------------------------------------


def test_upstream_info_first_one_stands(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/up"), "proxy")
    writers = [open_catalog() for _ in range(4)]
    assert raised(at_once(8, lambda i: writers[i % 4].save_upstream_info(repo.pk, "a" * 40, {"n": i}))) == []
    first = catalog.upstream_info_for(repo.pk, "a" * 40)
    assert first is not None and first["n"] in range(8)
    catalog.save_upstream_info(repo.pk, "a" * 40, {"n": 99})
    assert catalog.upstream_info_for(repo.pk, "a" * 40) == first
    assert catalog.upstream_info_for(repo.pk, "b" * 40) is None


def test_api_cache(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    body = bytes(range(256)) * 3
    catalog.api_cache_put("refs:acme/x", body, "/api/next?page=2")
    got = catalog.api_cache_get("refs:acme/x")
    assert got is not None and got[0] == body and got[1] == "/api/next?page=2" and got[2].tzinfo is None
    catalog.api_cache_put("refs:acme/x", b"new", None)
    assert catalog.api_cache_get("refs:acme/x")[:2] == (b"new", None)  # type: ignore[index]
    assert catalog.api_cache_get("refs:ACME/x") is None
    writers = [open_catalog() for _ in range(4)]
    assert raised(at_once(8, lambda i: writers[i % 4].api_cache_put("race", f"body {i}".encode(), None))) == []
    assert catalog.api_cache_get("race")[0].startswith(b"body ")  # type: ignore[index]
    assert count(catalog, "api_cache") == 2


def test_api_cache_prune_keeps_the_newest_with_a_case_sensitive_prefix(catalog: Catalog) -> None:
    for i in range(5):
        catalog.api_cache_put(f"tree:acme/x@{i}", b"x", None)
        time.sleep(0.002)
    others = ["Tree:acme/x@9", "TREE:y", "tree;", "tree", "tre", "commits:acme/x@1", "tree:\U0010ffff"]
    for k in others[:-1]:
        catalog.api_cache_put(k, b"o", None)
    assert catalog.api_cache_prune("tree:", 2) == 3
    kept = {k for k in [f"tree:acme/x@{i}" for i in range(5)] + others[:-1] if catalog.api_cache_get(k)}
    assert kept == {"tree:acme/x@3", "tree:acme/x@4"} | set(others[:-1])
    assert catalog.api_cache_prune("tree:", 2) == 0
    catalog.api_cache_put("tree:\U0010ffff", b"edge", None)
    assert catalog.api_cache_prune("tree:", 0) == 3
    assert catalog.api_cache_prune("nothing-here:", 0) == 0
    assert catalog.api_cache_get("Tree:acme/x@9") is not None


def test_touch_blobs_from_many_replicas(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    base = datetime(2024, 1, 1)
    shared = [sha(f"shared {i}", 64) for i in range(20)]
    writers = [open_catalog() for _ in range(4)]

    def touch(i: int) -> None:
        for rnd in range(3):
            batch = {s: (1000, i != 0, base + timedelta(minutes=10 * i + rnd)) for s in shared}
            batch.update({sha(f"own {i} {k}", 64): (7, True, base) for k in range(10)})
            writers[i % 4].touch_blobs(batch)

    assert raised(at_once(8, touch)) == []
    assert count(catalog, "blob_access") == 20 + 80
    with catalog.engine.connect() as c:
        rows = {r.sha256: r for r in c.execute(sa.select(schema.blob_access))}
    for s in shared:
        assert not rows[s].proxied  # one access said "not filled by pull-through": it stays
        assert rows[s].last_access == base + timedelta(minutes=72)  # the latest, whatever the order
    assert catalog.proxied_bytes() == 80 * 7
    catalog.touch_blobs({shared[0]: (1000, True, base)})  # an older access moves nothing back
    with catalog.engine.connect() as c:
        assert c.execute(sa.select(schema.blob_access.c.last_access).where(
            schema.blob_access.c.sha256 == shared[0])).scalar() == base + timedelta(minutes=72)
    catalog.touch_blobs({})
    catalog.forget_blob(shared[0])
    assert count(catalog, "blob_access") == 99


def test_eviction_candidates_and_wanted_blobs(catalog: Catalog) -> None:
    local = catalog.ensure_repo(RepoRef(MODEL, "acme/local"))
    mirror = catalog.ensure_repo(RepoRef(MODEL, "acme/mirror"), "mirror")
    proxy = catalog.ensure_repo(RepoRef(MODEL, "acme/proxy"), "proxy")
    blob = {n: sha(n, 64) for n in ("L", "M", "P1", "P2", "P3", "X", "N", "T1", "T2")}
    catalog.record_commit(local, commit("l"), files(("l", blob["L"])))
    catalog.record_commit(mirror, commit("m"), files(("m", blob["M"])))
    catalog.record_commit(proxy, commit("p1"), files(("p1", blob["P1"]), ("p2", blob["P2"])))
    catalog.record_commit(proxy, commit("p3"), files(("p3", blob["P3"])))
    catalog.pin(proxy.pk, sha("p3"), "main", "")
    t0 = datetime(2024, 1, 1)
    catalog.touch_blobs({blob["L"]: (1, True, t0), blob["M"]: (1, True, t0), blob["P1"]: (10, True, t0 + timedelta(1)),
                         blob["P2"]: (20, True, t0), blob["P3"]: (30, True, t0), blob["X"]: (40, True, t0 + timedelta(3)),
                         blob["N"]: (50, False, t0), blob["T1"]: (1, True, t0 + timedelta(2)),
                         blob["T2"]: (2, True, t0 + timedelta(2))})
    order = [blob["P2"], blob["P1"]] + sorted([blob["T1"], blob["T2"]]) + [blob["X"]]
    sizes = {blob["P2"]: 20, blob["P1"]: 10, blob["T1"]: 1, blob["T2"]: 2, blob["X"]: 40}
    assert catalog.eviction_candidates() == [(s, sizes[s]) for s in order]
    assert [s for s, _ in catalog.eviction_candidates(limit=2)] == order[:2]
    assert catalog.blob_wanted(blob["P3"], "x") and catalog.blob_wanted(blob["L"], "x")
    assert catalog.blob_wanted(blob["M"], "x") and not catalog.blob_wanted(blob["P1"], "x")
    assert catalog.blob_wanted(None, sha("oid m")) and not catalog.blob_wanted(None, sha("oid p1"))
    assert catalog.proxied_bytes() == 1 + 1 + 10 + 20 + 30 + 40 + 1 + 2


def test_fill_journal(catalog: Catalog) -> None:
    a = catalog.fill_started("sha256:" + "a" * 64, "a.spool")
    b = catalog.fill_started("oid:" + "b" * 40, None)
    c = catalog.fill_started("sha256:" + "c" * 64, "c.spool")
    catalog.fill_failed(c, 1 << 33, "d" * 64, None)
    # a new row says nothing was sent yet (a checkpoint of 0 bytes): a crash right now leaves
    # nothing to hash; only rows of older versions, with no checkpoint at all, are "crashed"
    assert catalog.crashed_fills() == []
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    rows = {r[0]: r for r in catalog.unverified_fills(3600)}
    assert set(rows) == {a, b, c}
    assert rows[a][3:] == (0, empty, 0)
    assert rows[c][1:] == ("sha256:" + "c" * 64, rows[c][2], 1 << 33, "d" * 64, None) and rows[c][2].tzinfo is None
    assert [r[0] for r in catalog.unverified_fills_of("sha256:" + "a" * 64)] == [a]
    catalog.fill_forget(b)
    assert {r[0] for r in catalog.unverified_fills(3600)} == {a, c}
    time.sleep(0.01)
    assert catalog.unverified_fills(0.001) == []  # the old ones are dropped


# -- users, groups, tokens ---------------------------------------------------------------------------


def test_users_and_groups(catalog: Catalog, open_catalog: Callable[[], Catalog]) -> None:
    alice = catalog.add_user("alice", ["ml", "B-team", "ml"])
    assert alice.groups == ("B-team", "ml") and alice.created_at.tzinfo is None
    with pytest.raises(Conflict):
        catalog.add_user("alice")
    catalog.add_user("Alice", ["a"])  # names are case-sensitive
    catalog.add_user("bob")
    writers = [open_catalog() for _ in range(4)]
    results = at_once(8, lambda i: writers[i % 4].add_to_group("bob", "ops"))
    assert sorted(r for r in results if isinstance(r, bool)) == [False] * 7 + [True]
    assert not catalog.add_to_group("bob", "ops")
    assert catalog.add_to_group("bob", "ml") and catalog.add_to_group("bob", "X1")
    assert [u.name for u in catalog.list_users()] == ["Alice", "alice", "bob"]
    assert catalog.list_groups() == {"B-team": ["alice"], "X1": ["bob"], "a": ["Alice"], "ml": ["alice", "bob"],
                                     "ops": ["bob"]}
    assert list(catalog.list_groups()) == by_bytes(["B-team", "X1", "a", "ml", "ops"])
    assert catalog.get_user("bob").groups == ("X1", "ml", "ops")  # type: ignore[union-attr]
    assert catalog.get_user("BOB") is None
    assert catalog.remove_from_group("bob", "ml") and not catalog.remove_from_group("bob", "ml")
    with pytest.raises(NotFound):
        catalog.add_to_group("nobody", "ml")
    assert catalog.remove_user("Alice") == []
    assert [u.name for u in catalog.list_users()] == ["alice", "bob"]


def test_tokens(catalog: Catalog) -> None:
    catalog.add_user("kim", ["ml"])
    catalog.add_user("lee")
    h1, h2, h3 = sha("t1", 64), sha("t2", 64), sha("t3", 64)
    expires = datetime(2031, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    t1 = catalog.add_token("ci", "kim", h1, "read", ["acme/*"], expires)
    assert t1.expires_at == datetime(2031, 1, 1, 10) and t1.repos == ("acme/*",)
    catalog.add_token("CI", "lee", h2, Role.WRITE, None, None)
    with pytest.raises(Conflict):
        catalog.add_token("ci", "lee", h3, "read", None, None)
    with pytest.raises(Conflict):
        catalog.add_token("other", "lee", h1, "read", None, None)
    with pytest.raises(NotFound):
        catalog.add_token("x", "nobody", h3, "read", None, None)
    rec = catalog.token_by_hash(h1)
    assert rec is not None and (rec.name, rec.user, rec.groups, rec.role) == ("ci", "kim", frozenset({"ml"}), Role.READ)
    assert rec.expires_at == datetime(2031, 1, 1, 10) and rec.usable(datetime(2031, 1, 1, 9, 59))
    assert not rec.usable(datetime(2031, 1, 1, 11, 0, tzinfo=timezone(timedelta(hours=1))))
    assert catalog.token_by_hash(h1.upper()) is None and catalog.token_by_hash(h3) is None
    assert [t.name for t in catalog.list_tokens()] == ["CI", "ci"]
    assert [t.name for t in catalog.list_tokens("kim")] == ["ci"]
    later = datetime(2030, 5, 5, 5, 5, 5, 5)
    catalog.touch_tokens({t1.id: later, 10**9: later})
    catalog.touch_tokens({t1.id: later - timedelta(days=1)})  # never backwards
    assert catalog.get_token("ci").last_used_at == later  # type: ignore[union-attr]
    row, changed = catalog.revoke_token("ci")
    assert changed and row.state() == "revoked" and not catalog.revoke_token("ci")[1]
    assert catalog.token_by_hash(h1).revoked_at is not None  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        catalog.revoke_token("nope")
    assert catalog.remove_user("kim") == ["ci"]
    assert catalog.token_by_hash(h1) is None and [t.name for t in catalog.list_tokens()] == ["CI"]


# -- retention and gc ----------------------------------------------------------------------------------


def _reference_commits_to_drop(catalog: Catalog, mirrors: dict[RepoRef, MirrorSpec]) -> list[tuple[int, str]]:
    """gc's retention as it was written before it streamed (whole tables in memory): the answers
    must stay the same."""
    commits = catalog.all_commits()
    origin = {repo: o for repo, o, _ in commits}
    keep = {(repo, c) for repo, _, c in catalog.all_refs()} | catalog.pinned_commits()
    keep |= {(repo, c) for repo, o, c in commits if o == "local"}
    pk_to_ref = {r.pk: r.ref for r in catalog.list_repos()}
    history: dict[tuple[int, str], list[str]] = defaultdict(list)
    for repo, name, new, _at in catalog.ref_log_all():
        if new:
            history[(repo, name)].append(new)
    for (repo, name), seq in history.items():
        if origin.get(repo) != "mirror":
            continue
        spec = mirrors.get(pk_to_ref[repo])
        keep_last = spec.keep_last if spec else None
        keep_tags = spec.keep_tags if spec else True
        if name.startswith("refs/tags/"):
            if keep_tags:
                keep |= {(repo, c) for c in seq}
            continue
        newest_first = list(dict.fromkeys(reversed(seq)))
        keep |= {(repo, c) for c in (newest_first if keep_last is None else newest_first[:keep_last])}
    for repo, o, c in commits:
        if o == "mirror":
            spec = mirrors.get(pk_to_ref[repo])
            if spec is None or spec.keep_last is None:
                keep.add((repo, c))
    return [(repo, c) for repo, _, c in commits if (repo, c) not in keep]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few rows, so that a small catalog crosses many batch boundaries."""
    monkeypatch.setattr(catalog_lifecycle, "STREAM_BATCH", 3)
    monkeypatch.setattr(catalog_lifecycle, "ASK_BATCH", 2)


@pytest.fixture
def history(catalog: Catalog) -> dict[str, Any]:
    """Repos of every origin with histories: branches moved back and forth, tags, pins, a commit
    no ref names, blobs shared between repos."""
    rng = random.Random(7)
    blobs = [sha(f"blob {i}", 64) for i in range(12)]
    out: dict[str, Any] = {"blobs": blobs, "repos": {}}
    for name, origin in (("acme/local", "local"), ("acme/m1", "mirror"), ("acme/m2", "mirror"),
                         ("acme/m3", "mirror"), ("acme/proxy", "proxy")):
        repo = catalog.ensure_repo(RepoRef(MODEL, name), origin)
        out["repos"][name] = repo
        shas = []
        for i in range(8):
            c = commit(f"{name} {i}", ts=1_700_000_000 + i)
            picked = rng.sample(blobs, 3)
            catalog.record_commit(repo, c, files(*[(f"f{k}", b) for k, b in enumerate(picked)], ("readme", None)))
            shas.append(c.sha)
        for i in (0, 1, 2, 1, 3, 4, 3):  # main goes back and forth
            catalog.set_ref(repo, "refs/heads/main", shas[i])
        catalog.set_ref(repo, "refs/heads/dev", shas[5])
        catalog.set_ref(repo, "refs/tags/v1", shas[6])
        catalog.set_ref(repo, "refs/tags/v1", None)
        if name in ("acme/m2", "acme/proxy"):
            catalog.pin(repo.pk, shas[7], "x", "")
        out[name] = shas
    out["mirrors"] = {
        RepoRef(MODEL, "acme/m1"): MirrorSpec(repo="acme/m1", keep_last=1, keep_tags=False),
        RepoRef(MODEL, "acme/m2"): MirrorSpec(repo="acme/m2", keep_last=2),
        # acme/m3: no spec (removed from the config): everything stays
    }
    return out


def test_gc_reads_stream_and_agree_with_whole_table_reads(
        catalog: Catalog, history: dict[str, Any], small_batches: None) -> None:
    commits = catalog.all_commits()
    assert len(commits) == 40 and len(set(commits)) == 40
    with catalog.retention_view() as view:
        assert sorted(view.commits()) == sorted(commits)
        assert sorted(view.refs()) == sorted(catalog.all_refs())
        assert list(view.ref_log()) == catalog.ref_log_all()
        assert set(view.pins()) == catalog.pinned_commits()
        assert sorted(view.repos()) == sorted((r.pk, r.ref, r.origin) for r in catalog.list_repos())
    mirrors = history["mirrors"]
    drop = commits_to_drop(catalog, mirrors)
    assert drop == _reference_commits_to_drop(catalog, mirrors)
    dropped = {name: {history[name].index(c) for r, c in drop if r == repo.pk}
               for name, repo in history["repos"].items()}
    # main ends at 3 after 0,1,2,1,3,4,3; dev is at 5; the tag v1 was at 6; 7 is pinned in m2 and proxy
    assert dropped == {"acme/local": set(), "acme/m1": {0, 1, 2, 4, 6, 7}, "acme/m2": {0, 1, 2},
                       "acme/m3": set(), "acme/proxy": {0, 1, 2, 4, 6}}


def test_referenced_blobs_batched_and_whole_agree(catalog: Catalog, history: dict[str, Any], small_batches: None) -> None:
    blobs = history["blobs"]
    everything = catalog.referenced_blobs()
    assert everything == {s for s in blobs if catalog.where_is(s) is not None}
    unknown = [sha(f"unknown {i}", 64) for i in range(5)]
    assert catalog.referenced_among(blobs + unknown) == everything
    assert catalog.referenced_among([]) == set()
    drop = set(commits_to_drop(catalog, history["mirrors"]))
    after = catalog.referenced_blobs(excluding=drop)
    assert catalog.referenced_among(blobs + unknown, excluding=drop) == after
    assert after == {e.sha256 for r, _o, c in catalog.all_commits() if (r, c) not in drop
                     for e in catalog.list_entries(catalog._repo_by_pk(r), c, recursive=True) if e.sha256}
    repo = history["repos"]["acme/proxy"]
    mine = catalog.blobs_of_repo(repo.pk)
    assert mine == {e.sha256 for c in history["acme/proxy"] for e in catalog.list_entries(repo, c, recursive=True)
                    if e.sha256}
    assert catalog.count_commits(repo.pk) == 8
    assert set(catalog.entry_blob_sizes()) == {(s, 2) for s in everything}
    some = min(everything)
    hit = catalog.entry_with_size(some, 2)
    assert hit is not None and hit[0].repo_id.startswith("acme/") and hit[2].startswith("f")
    assert catalog.entry_with_size(some, 3) is None
    # deleting the dropped commits, then a repo
    assert drop and catalog.delete_commits(sorted(drop)) == len(drop)
    assert catalog.referenced_blobs() == after
    catalog.delete_repo(repo.pk)
    assert catalog.count_commits(repo.pk) == 0 and catalog.get_repo(repo.ref) is None
    assert catalog.referenced_among(mine) == catalog.referenced_blobs() & mine


def test_retention_reads_one_snapshot(catalog: Catalog, open_catalog: Callable[[], Catalog], small_batches: None) -> None:
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/snap"))
    for i in range(5):
        c = commit(f"s{i}")
        catalog.record_commit(repo, c, [], [RefUpdate("refs/heads/main", c.sha)])
    writer = open_catalog()
    late = commit("late")
    with catalog.retention_view() as view:
        refs = list(view.refs())
        writer.record_commit(repo, late, files(("x", sha("late blob", 64))), [RefUpdate("refs/heads/late", late.sha)])
        seen = [c for _r, _o, c in view.commits()]
    assert refs == [(repo.pk, "refs/heads/main", sha("s4"))]
    assert late.sha not in seen and len(seen) == 5
    assert late.sha in {c for _r, _o, c in catalog.all_commits()}


def test_postgresql_streams_through_a_server_side_cursor(pg_catalog: Catalog, small_batches: None) -> None:
    """SQLite's cursor reads rows from its file as they are asked for; PostgreSQL needs a
    server-side cursor not to send every row at once."""
    catalog = pg_catalog
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/cursor"))
    for i in range(10):
        catalog.record_commit(repo, commit(f"k{i}"), [])
    with catalog.retention_view() as view:
        it = view.commits()
        next(it)
        declared = view._c.execute(sa.text("SELECT statement FROM pg_cursors")).scalars().all()
        assert any("FROM commits" in d for d in declared), declared
        assert len(list(it)) == 9


# -- failures mapped to the package's errors -------------------------------------------------------------


class _Tmpfs:
    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        p = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs at {path} (this test needs root and mount(8)): {p.stderr.strip()}",
                        pytrace=False)

    def fill(self) -> None:
        """Take every free byte."""
        chunk = bytes(1 << 16)
        with open(self.path / "filler", "ab", buffering=0) as f:
            for n in (1 << 16, 4096, 512, 1):
                try:
                    while True:
                        f.write(chunk[:n])
                except OSError:
                    continue

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
        try:
            self.path.rmdir()
        except OSError:
            pass


def _write_until_full(catalog: Catalog) -> BaseException:
    blob = os.urandom(48_000).hex()  # not compressible: TOAST stores it as it is
    for i in range(2000):
        try:
            catalog.audit("filler", None, n=i, data=blob)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            return e
    raise AssertionError("the catalog kept writing on a full disk")


def test_a_full_disk_is_insufficient_storage(backend: str, request: pytest.FixtureRequest) -> None:
    import tempfile

    # under /tmp itself: PostgreSQL's server (the `postgres` user) must reach it, not pytest's 0700 dirs
    disk = _Tmpfs(Path(tempfile.mkdtemp(prefix="hubmirror-small-")), "16m")
    try:
        if backend == "sqlite":
            catalog = Catalog(f"sqlite:///{disk.path / 'catalog.sqlite3'}")
            catalog.migrate()
            disk.fill()
            try:
                err = _write_until_full(catalog)
                assert isinstance(err, InsufficientStorage), repr(err)
                assert catalog.list_repos() == []  # reads go on
            finally:
                catalog.close()
            return
        if os.environ.get("HUBMIRROR_TEST_DATABASE_URL"):
            pytest.skip("needs the throwaway cluster: a tablespace on a small local disk is made for this test")
        server = request.getfixturevalue("postgres_server")
        os.chown(disk.path, *_postgres_ids())
        space = f"small_{os.getpid()}"
        admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE TABLESPACE {space} LOCATION '{disk.path}'"))
                c.execute(sa.text(f"CREATE DATABASE {space} TABLESPACE {space} STRATEGY FILE_COPY"))
            catalog = Catalog(server.url(space))
            try:
                catalog.migrate()
                disk.fill()
                err = _write_until_full(catalog)
                assert isinstance(err, InsufficientStorage), repr(err)
                assert catalog.list_repos() == []
            finally:
                catalog.close()
        finally:
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {space} WITH (FORCE)"))
                c.execute(sa.text(f"DROP TABLESPACE IF EXISTS {space}"))
            admin.dispose()
    finally:
        disk.unmount()


def _postgres_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def test_postgresql_lost_connection_is_catalog_unavailable(pg_catalog: Catalog) -> None:
    """A database server that restarts or drops connections (SQLite has no connection to lose)."""
    catalog = pg_catalog
    repo = catalog.ensure_repo(RepoRef(MODEL, "acme/lost"))

    # a connection lost mid-request (here: while its UPDATE waits for a row lock another session
    # holds): the caller gets CatalogUnavailable, and nothing was written
    admin = Catalog(catalog.url)
    try:
        with admin.engine.begin() as holder:
            holder.execute(sa.text("SELECT id FROM repos WHERE id = :id FOR UPDATE"), {"id": repo.pk})
            with ThreadPoolExecutor(1) as pool:
                blocked = pool.submit(catalog.set_origin, repo, "mirror")
                waiting: list[int] = []
                deadline = time.monotonic() + 30
                while not waiting and time.monotonic() < deadline:
                    time.sleep(0.02)
                    waiting = list(holder.execute(sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")).scalars())
                assert len(waiting) == 1, "the update never waited for the lock"
                holder.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": waiting[0]})
                with pytest.raises(CatalogUnavailable) as info:
                    blocked.result(30)
    finally:
        admin.close()
    assert info.value.status == 503 and not isinstance(info.value, CatalogBusy)
    assert "retry" in info.value.message
    assert catalog.get_repo(repo.ref).origin == "local"  # type: ignore[union-attr]
    # connections the server dropped while idle in the pool are replaced unseen
    with catalog.engine.connect() as c:
        c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                          "current_database() AND pid <> pg_backend_pid()"))
    assert catalog.get_repo(repo.ref) is not None
    catalog.audit("after", None)


def test_postgresql_unreachable_server_is_catalog_unavailable() -> None:
    """A database server that cannot be reached (SQLite is a file: its errors are the disk's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    catalog = Catalog(f"postgresql://postgres@127.0.0.1:{port}/nothing")
    try:
        with pytest.raises(CatalogUnavailable) as info:
            catalog.ping()
        assert "127.0.0.1" in info.value.message
        with pytest.raises(CatalogUnavailable):
            catalog.get_repo(RepoRef(MODEL, "a/b"))
    finally:
        catalog.close()


def test_postgresql_deadlock_is_catalog_busy(pg_catalog: Catalog) -> None:
    """SQLite has one writer at a time, so no deadlock: its busy timeout has its own test."""
    catalog = pg_catalog
    a = catalog.ensure_repo(RepoRef(MODEL, "acme/a"))
    b = catalog.ensure_repo(RepoRef(MODEL, "acme/b"))
    repos = sa.table("repos", sa.column("id"), sa.column("origin"))
    barrier = threading.Barrier(2)

    def cross(first: int, second: int) -> None:
        with catalog.engine.begin() as c:
            c.execute(sa.update(repos).where(repos.c.id == first).values(origin="mirror"))
            barrier.wait()
            c.execute(sa.update(repos).where(repos.c.id == second).values(origin="mirror"))

    results = at_once(2, lambda i: cross(a.pk, b.pk) if i == 0 else cross(b.pk, a.pk))
    errors = raised(results)
    assert len(errors) == 1 and isinstance(errors[0], CatalogBusy), errors
    assert errors[0].status == 503 and "retry" in errors[0].message


def test_sqlite_busy_past_the_timeout_is_catalog_busy(sqlite_catalog: Catalog) -> None:
    """SQLite's busy timeout (PostgreSQL waits for row locks; its deadlocks have their own test)."""
    catalog = sqlite_catalog
    catalog.engine.dispose()

    @sa.event.listens_for(catalog.engine, "connect")
    def _short(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    holder = sqlite3.connect(catalog.engine.url.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(CatalogBusy):
            catalog.audit("blocked", None)
        assert catalog.audit_events() == []  # reading goes on (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    catalog.audit("free", None)
    assert [e["action"] for e in catalog.audit_events()] == ["free"]
