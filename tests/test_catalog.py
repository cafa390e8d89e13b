from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from hubmirror.catalog import Catalog, RefUpdate
from hubmirror.errors import Conflict, RevisionNotFound
from hubmirror.model.entries import Commit, Entry, with_directories
from hubmirror.model.names import RepoRef, RepoType


@pytest.fixture(params=["sqlite"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    c = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    c.migrate()
    c.migrate()  # idempotent
    return c


def _commit(sha: str, parents: list[str], ts: int) -> Commit:
    return Commit(sha, parents, f"title {sha[:4]}", "msg", "me", datetime.fromtimestamp(ts, timezone.utc))


def test_resolve_branch_tag_sha_and_full_ref(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(RepoType.MODEL, "a/b"))
    a, b = "a" * 40, "b" * 40
    catalog.record_commit(repo, _commit(a, [], 1), [], [RefUpdate("refs/heads/main", a)])
    catalog.record_commit(repo, _commit(b, [a], 2), [], [RefUpdate("refs/heads/main", b), RefUpdate("refs/tags/v1", a)])
    assert catalog.resolve(repo, "main") == b
    assert catalog.resolve(repo, "refs/heads/main") == b
    assert catalog.resolve(repo, "v1") == a
    assert catalog.resolve(repo, a) == a
    with pytest.raises(RevisionNotFound):
        catalog.resolve(repo, "c" * 40)
    with pytest.raises(RevisionNotFound):
        catalog.resolve(repo, "nope")
    assert [c.sha for c in catalog.log(repo, b)] == [b, a]
    hist = catalog.ref_history(repo, "refs/heads/main")
    assert [(h["old_commit"], h["new_commit"]) for h in hist] == [(None, a), (a, b)]


def test_ref_compare_and_swap_refuses_a_moved_ref(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(RepoType.MODEL, "a/b"))
    a, b, c = "a" * 40, "b" * 40, "c" * 40
    catalog.record_commit(repo, _commit(a, [], 1), [], [RefUpdate("refs/heads/main", a, expect=None)])
    catalog.record_commit(repo, _commit(b, [a], 2), [], [RefUpdate("refs/heads/main", b, expect=a)])
    with pytest.raises(Conflict):
        catalog.record_commit(repo, _commit(c, [a], 3), [], [RefUpdate("refs/heads/main", c, expect=a)])
    # the whole transaction rolled back: commit c is not recorded either
    assert catalog.get_commit(repo, c) is None
    assert catalog.resolve(repo, "main") == b


def test_tree_listing_and_prefix_ranges(catalog: Catalog) -> None:
    repo = catalog.ensure_repo(RepoRef(RepoType.DATASET, "x"))
    files = [Entry(p, "file", "0" * 40, 1, "1" * 64) for p in ["a/1", "a/b/2", "a0", "a.txt", "b"]]
    entries, tree = with_directories(files)
    catalog.record_commit(repo, Commit("d" * 40, tree=tree), entries, [RefUpdate("refs/heads/main", "d" * 40)])
    sha = "d" * 40
    assert [e.path for e in catalog.list_entries(repo, sha)] == ["a", "a.txt", "a0", "b"]
    assert [e.path for e in catalog.list_entries(repo, sha, under="a")] == ["a/1", "a/b"]
    assert [e.path for e in catalog.list_entries(repo, sha, under="a", recursive=True)] == ["a/1", "a/b", "a/b/2"]
    assert [e.path for e in catalog.list_entries(repo, sha, recursive=True, after="a/b", limit=2)] == ["a/b/2", "a0"]
