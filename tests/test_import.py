"""`hubmirror import`: ids agree with git, LFS is decided like the Hub, re-imports are cheap."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hubmirror import ingest
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


# --- symlinks: only the folder's own files are imported ------------------------------------------

SECRET = b"outside the folder: must never be imported\n"


def outside_secret(tmp_path: Path) -> Path:
    p = tmp_path / "outside" / "secret.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(SECRET)
    return p


def blob_files(blob_root: Path, data: bytes) -> list[Path]:
    """Every file under BLOBS/sha256 named by the sha256 of `data` (whatever the fan-out)."""
    sha = hashlib.sha256(data).hexdigest()
    return list((blob_root / "sha256").rglob(sha)) if (blob_root / "sha256").exists() else []


def assert_nothing_recorded(catalog: Catalog, store: LocalBlobStore, ref: RepoRef, *leaked: bytes) -> None:
    assert catalog.get_repo(ref) is None
    for data in leaked:
        assert store.stat(hashlib.sha256(data).hexdigest()) is None
        assert blob_files(store.root, data) == []


def test_link_to_etc_passwd_is_refused(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/passwd")
    src = make(tmp_path / "src", {"config.json": b"{}"})
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput) as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "passwd") in e.value.message and "'/etc/passwd'" in e.value.message
    assert "outside the folder" in e.value.message
    assert_nothing_recorded(catalog, store, ref, Path("/etc/passwd").read_bytes())


def test_relative_link_escaping_with_dotdot_is_refused(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/dotdot")
    outside_secret(tmp_path)
    src = make(tmp_path / "src", {"sub/ok.txt": b"ok"})
    (src / "sub" / "leak.txt").symlink_to("../../outside/secret.txt")
    with pytest.raises(InvalidInput, match="outside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "sub" / "leak.txt") in e.value.message and "'../../outside/secret.txt'" in e.value.message
    assert_nothing_recorded(catalog, store, ref, SECRET)


def test_link_chain_ending_outside_is_refused(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/chain")
    secret = outside_secret(tmp_path)
    src = make(tmp_path / "src", {"ok.txt": b"ok"})
    (src / "hop2").symlink_to(secret)          # inside the folder, but leaves it
    (src / "hop1").symlink_to("hop2")          # looks harmless: points inside
    with pytest.raises(InvalidInput, match="outside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "hop1") in e.value.message and str(secret) in e.value.message
    assert "(and 1 more such link)" in e.value.message  # hop2: every refused link is counted
    assert_nothing_recorded(catalog, store, ref, SECRET)


def test_dangling_and_looping_links_are_refused(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/dangling")
    src = make(tmp_path / "src", {"ok.txt": b"ok"})
    (src / "gone").symlink_to("no-such-file")
    with pytest.raises(InvalidInput, match="cannot be resolved") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "gone") in e.value.message and "'no-such-file'" in e.value.message
    (src / "gone").unlink()
    (src / "loop").symlink_to("loop")
    with pytest.raises(InvalidInput, match="cannot be resolved") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "loop") in e.value.message
    assert_nothing_recorded(catalog, store, ref)


def test_link_to_dev_zero_and_to_a_fifo_are_refused(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/dev")
    src = make(tmp_path / "src", {"ok.txt": b"ok"})
    (src / "zero").symlink_to("/dev/zero")
    with pytest.raises(InvalidInput, match="/dev/zero") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "zero") in e.value.message
    (src / "zero").unlink()
    # a special file inside the folder stays refused, even through a link and with skip_links
    os.mkfifo(src / "pipe")
    (src / "to-pipe").symlink_to("pipe")
    for skip in (False, True):
        with pytest.raises(InvalidInput, match="not a regular file"):
            import_folder(catalog, store, ref, src, skip_links=skip, warn=lambda m: None)
    os.unlink(src / "pipe")
    os.mkfifo(tmp_path / "outside-pipe")
    (src / "to-pipe").unlink()
    (src / "to-pipe").symlink_to(tmp_path / "outside-pipe")
    with pytest.raises(InvalidInput, match="outside the folder"):
        import_folder(catalog, store, ref, src)
    assert_nothing_recorded(catalog, store, ref)


def test_symlinked_directories_are_reported_not_dropped(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/dirlinks")
    outside_secret(tmp_path)
    src = make(tmp_path / "src", {"real/a.txt": b"a"})
    (src / "alias").symlink_to("real", target_is_directory=True)
    with pytest.raises(InvalidInput, match="directory inside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "alias") in e.value.message and "does not follow directory links" in e.value.message
    (src / "alias").unlink()
    (src / "up").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(InvalidInput, match="directory outside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "up") in e.value.message and str(tmp_path / "outside") in e.value.message
    (src / "up").unlink()
    (src / "real" / "self").symlink_to("..", target_is_directory=True)  # a loop
    with pytest.raises(InvalidInput, match="directory inside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / "real" / "self") in e.value.message
    assert_nothing_recorded(catalog, store, ref, SECRET)


def test_gitattributes_linking_outside_is_never_read(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/attrs")
    attrs = b"*.txt filter=lfs diff=lfs merge=lfs -text\n"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "attrs").write_bytes(attrs)
    src = make(tmp_path / "src", {"a.txt": b"a"})
    (src / ".gitattributes").symlink_to(tmp_path / "outside" / "attrs")
    with pytest.raises(InvalidInput, match="outside the folder") as e:
        import_folder(catalog, store, ref, src)
    assert str(src / ".gitattributes") in e.value.message
    assert_nothing_recorded(catalog, store, ref, attrs)
    warnings: list[str] = []
    res = import_folder(catalog, store, ref, src, skip_links=True, warn=warnings.append)
    assert len(warnings) == 1 and str(src / ".gitattributes") in warnings[0]
    repo = catalog.get_repo(ref)
    assert repo is not None and res.files == 1
    entry = catalog.get_entry(repo, res.commit, "a.txt")
    assert entry is not None and entry.lfs is False  # the outside rules were not applied
    assert catalog.get_entry(repo, res.commit, ".gitattributes") is None
    assert blob_files(store.root, attrs) == []


def test_links_to_files_inside_are_followed(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/inside")
    src = make(tmp_path / "src", {"weights/model.bin": b"weights", "attrs": b"*.bin filter=lfs\n"})
    (src / "model.bin").symlink_to("weights/model.bin")
    (src / "weights" / "again.bin").symlink_to(src / "model.bin")  # absolute, then a chain, all inside
    (src / ".gitattributes").symlink_to("attrs")
    res = import_folder(catalog, store, ref, src)
    repo = catalog.get_repo(ref)
    assert repo is not None and res.files == 5
    sha = hashlib.sha256(b"weights").hexdigest()
    for path in ("model.bin", "weights/again.bin", "weights/model.bin"):
        e = catalog.get_entry(repo, res.commit, path)
        assert e is not None and e.type == "file" and e.sha256 == sha and e.size == 7 and e.lfs is True
    assert b"".join(store.read(sha)) == b"weights"


def test_skip_links_skips_each_with_a_warning(env: tuple[Catalog, LocalBlobStore], tmp_path: Path) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/skip-links")
    secret = outside_secret(tmp_path)
    src = make(tmp_path / "src", {"keep.txt": b"keep", "sub/keep2.txt": b"keep2"})
    bad = {
        "abs": secret, "sub/rel": Path("../../outside/secret.txt"), "chain": Path("abs"),
        "dangling": Path("nowhere"), "zero": Path("/dev/zero"), "dirlink": Path("sub"),
        "outdir": tmp_path / "outside",
    }
    for rel, target in bad.items():
        (src / rel).symlink_to(target)
    (src / "good").symlink_to("keep.txt")
    warnings: list[str] = []
    res = import_folder(catalog, store, ref, src, skip_links=True, warn=warnings.append)
    assert len(warnings) == len(bad)
    for rel in bad:
        assert sum(f"'{src / rel}'" in w for w in warnings) == 1, rel
    repo = catalog.get_repo(ref)
    assert repo is not None
    paths = {e.path for e in catalog.list_entries(repo, res.commit, recursive=True, files_only=True)}
    assert paths == {"keep.txt", "sub/keep2.txt", "good"}
    assert blob_files(store.root, SECRET) == []


def _swap_after_scan(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    real_scan = ingest.scan_folder

    def scan_then_swap(*args: Any, **kwargs: Any) -> list[ingest.ScannedFile]:
        files = real_scan(*args, **kwargs)
        swap()
        return files

    monkeypatch.setattr(ingest, "scan_folder", scan_then_swap)


def test_file_swapped_for_a_link_after_the_scan_is_refused(
    env: tuple[Catalog, LocalBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/swap")
    secret = outside_secret(tmp_path)
    src = make(tmp_path / "src", {"a.txt": b"a", "z.txt": b"z"})

    def swap_file() -> None:
        (src / "z.txt").unlink()
        (src / "z.txt").symlink_to(secret)

    _swap_after_scan(monkeypatch, swap_file)
    with pytest.raises(InvalidInput, match="replaced by a symlink after the folder was scanned") as e:
        ingest.import_folder(catalog, store, ref, src)
    assert str(src / "z.txt") in e.value.message
    assert_nothing_recorded(catalog, store, ref, SECRET)


def test_directory_swapped_for_a_link_after_the_scan_is_refused(
    env: tuple[Catalog, LocalBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # O_NOFOLLOW guards only the last component: the inode check catches a swapped parent
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/swapdir")
    outside_secret(tmp_path)
    src = make(tmp_path / "src", {"sub/secret.txt": b"harmless"})

    def swap_dir() -> None:
        shutil.rmtree(src / "sub")
        (src / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)

    _swap_after_scan(monkeypatch, swap_dir)
    with pytest.raises(InvalidInput, match="was replaced after the folder was scanned") as e:
        ingest.import_folder(catalog, store, ref, src)
    assert str(src / "sub" / "secret.txt") in e.value.message
    assert_nothing_recorded(catalog, store, ref, SECRET)


def test_file_changed_between_hash_and_store_is_refused(
    env: tuple[Catalog, LocalBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, store = env
    ref = RepoRef(RepoType.MODEL, "a/inplace")
    src = make(tmp_path / "src", {"a.txt": b"before"})
    real_hash = ingest._hash_file

    def hash_then_change(*args: Any, **kwargs: Any) -> tuple[int, str, str]:
        out = real_hash(*args, **kwargs)
        with open(src / "a.txt", "r+b") as fh:  # same inode, same size, other bytes
            fh.write(b"AFTER!")
        return out

    monkeypatch.setattr(ingest, "_hash_file", hash_then_change)
    with pytest.raises(InvalidInput, match="changed while it was imported") as e:
        ingest.import_folder(catalog, store, ref, src)
    assert str(src / "a.txt") in e.value.message
    assert_nothing_recorded(catalog, store, ref, b"before", b"AFTER!")


def test_cli_refused_link_json_and_skip_links(tmp_path: Path) -> None:
    secret = outside_secret(tmp_path)
    src = make(tmp_path / "src", {"config.json": b"{}"})
    (src / "leak").symlink_to(secret)
    data = tmp_path / "data"
    hm = [sys.executable, "-m", "hubmirror"]
    p = subprocess.run([*hm, "import", "acme/links", str(src), "--data", str(data), "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "failed" and str(src / "leak") in out["error"] and str(secret) in out["error"]
    p = subprocess.run([*hm, "import", "acme/links", str(src), "--data", str(data)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: ") and str(src / "leak") in p.stderr
    p = subprocess.run([*hm, "import", "acme/links", str(tmp_path / "missing"), "--data", str(data), "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and json.loads(p.stdout)["status"] == "failed"
    catalog = Catalog(f"sqlite:///{(data / 'catalog.sqlite3').resolve()}")
    assert catalog.get_repo(RepoRef(RepoType.MODEL, "acme/links")) is None
    assert blob_files(data / "blobs", SECRET) == []

    p = subprocess.run([*hm, "import", "acme/links", str(src), "--data", str(data), "--json", "--skip-links"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # warnings stay out of stdout
    assert out["status"] == "committed" and out["files"] == 1
    assert "warning: skipped" in p.stderr and str(src / "leak") in p.stderr
    assert catalog.get_repo(RepoRef(RepoType.MODEL, "acme/links")) is not None
    assert blob_files(data / "blobs", SECRET) == []
