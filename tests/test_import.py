"""`hubmirror import`: ids agree with git, LFS is decided like the Hub, re-imports are cheap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubmirror.catalog import Catalog
from hubmirror.errors import InvalidInput, InvalidPath
from hubmirror.ingest import LfsRules, import_folder
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def env(tmp_path: Path) -> tuple[Catalog, LocalBlobStore]:
    c = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    c.migrate()
    return c, LocalBlobStore(tmp_path / "blobs")


def make(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_lfs_rules_like_gitattributes() -> None:
    r = LfsRules("*.bin filter=lfs diff=lfs merge=lfs -text\nkeep/*.bin -filter\n# comment\nmodels/** filter=lfs\n")
    assert r.match("a.bin") is True
    assert r.match("deep/dir/a.bin") is True
    assert r.match("keep/a.bin") is False
    assert r.match("models/x/y.txt") is True
    assert r.match("readme.md") is None


@needs_git
def test_blob_and_tree_ids_agree_with_git(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    files = {"a.txt": b"hello\n", "sub/b.txt": b"x", "sub/deep/c.txt": b"yy", "empty": b""}
    src = make(tmp_path / "src", files)
    res = import_folder(catalog, store, RepoRef(RepoType.MODEL, "a/b"), src)
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "."], check=True)
    git_tree = subprocess.run(["git", "-C", str(src), "write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    repo = catalog.get_repo(RepoRef(RepoType.MODEL, "a/b"))
    assert repo is not None
    commit = catalog.get_commit(repo, res.commit)
    assert commit is not None and commit.tree == git_tree
    for rel in files:
        oid = subprocess.run(["git", "-C", str(src), "hash-object", rel], check=True, capture_output=True, text=True).stdout.strip()
        e = catalog.get_entry(repo, res.commit, rel)
        assert e is not None and e.oid == oid


def test_lfs_by_pattern_and_by_size_and_reimport_writes_nothing(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    src = make(tmp_path / "src", {
        ".gitattributes": b"*.pt filter=lfs diff=lfs merge=lfs -text\n",
        "small.pt": b"tiny but lfs",
        "big.txt": b"b" * (10 * 1024 * 1024),
        "almost.txt": b"a" * (10 * 1024 * 1024 - 1),
    })
    ref = RepoRef(RepoType.MODEL, "a/lfs")
    res = import_folder(catalog, store, ref, src)
    repo = catalog.get_repo(ref)
    assert repo is not None
    lfs = {e.path: e.lfs for e in catalog.list_entries(repo, res.commit, recursive=True, files_only=True)}
    assert lfs == {".gitattributes": False, "small.pt": True, "big.txt": True, "almost.txt": False}
    again = import_folder(catalog, store, ref, src)
    assert not again.changed and again.commit == res.commit and again.bytes_written == 0
    (src / "almost.txt").write_bytes(b"changed")
    third = import_folder(catalog, store, ref, src, message="change one file")
    assert third.changed and third.bytes_written == len(b"changed")
    assert catalog.get_commit(repo, third.commit).parents == [res.commit]  # type: ignore[union-attr]
    # last_commit moves only for the file that changed
    e_changed = catalog.get_entry(repo, third.commit, "almost.txt")
    e_same = catalog.get_entry(repo, third.commit, "big.txt")
    assert e_changed is not None and e_changed.last_commit == third.commit
    assert e_same is not None and e_same.last_commit == res.commit


def test_hf_local_dir_metadata_and_git_dirs_are_skipped(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    src = make(tmp_path / "src", {"a.txt": b"a", ".git/HEAD": b"ref", ".cache/huggingface/download/a.txt.metadata": b"m"})
    res = import_folder(catalog, store, RepoRef(RepoType.MODEL, "a/skip"), src)
    assert res.files == 1


def test_refuses_bad_folders_and_branches(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/bad")
    with pytest.raises(InvalidInput, match="does not exist"):
        import_folder(catalog, store, ref, tmp_path / "missing")
    src = make(tmp_path / "src", {"a.txt": b"a"})
    with pytest.raises(InvalidInput, match="revision|branch"):
        import_folder(catalog, store, ref, src, branch="../main")
    with pytest.raises(InvalidInput, match="branch"):
        import_folder(catalog, store, ref, src, branch="0123456789abcdef0123456789abcdef01234567")
    bad = make(tmp_path / "bad", {"ok.txt": b"x"})
    (bad / "back\\slash.txt").write_bytes(b"y")
    with pytest.raises(InvalidPath, match="backslash"):
        import_folder(catalog, store, ref, bad)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        import_folder(catalog, store, ref, fifo)
    assert catalog.get_repo(ref) is None  # nothing was recorded


def test_cli_import_tag_and_errors(tmp_path: Path) -> None:
    src = make(tmp_path / "src", {"config.json": b"{}"})
    data = tmp_path / "data"
    hm = [sys.executable, "-m", "hubmirror"]
    p = subprocess.run([*hm, "import", "acme/cli", str(src), "--data", str(data), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["changed"] is True and out["files"] == 1 and len(out["commit"]) == 40
    p = subprocess.run([*hm, "tag", "acme/cli", "v1", "--data", str(data)], capture_output=True, text=True)
    assert p.returncode == 0 and out["commit"] in p.stdout
    p = subprocess.run([*hm, "import", "bad..id", str(src), "--data", str(data)], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid repo id 'bad..id'" in p.stderr
    p = subprocess.run([*hm, "import", "acme/cli", str(src), "--data", str(data), "--revision", "a..b"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "invalid revision" in p.stderr
    p = subprocess.run([*hm, "tag", "acme/none", "v1", "--data", str(data)], capture_output=True, text=True)
    assert p.returncode == 1 and "not found" in p.stderr
