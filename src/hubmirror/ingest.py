"""`hubmirror import`: commit a local folder as a new commit on a branch.

LFS is decided like the Hub: a `filter=lfs` pattern in the folder's .gitattributes, else a
size of 10 MiB or more. Each file is hashed first; only blobs the store lacks are written,
and the store re-hashes them while writing, so a file that changes during the import is
refused rather than recorded with the wrong digest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pathspec

from .catalog import Catalog, RefUpdate
from .catalog.catalog import branch_ref
from .errors import InvalidInput, InvalidPath
from .locks import GcLock
from .model.entries import Commit, Entry, with_directories
from .model.gitobj import (
    LFS_THRESHOLD,
    git_blob_header,
    git_blob_sha1,
    git_commit_sha1,
    lfs_pointer,
)
from .model.names import RepoRef, validate_branch, validate_path
from .store import BlobStore

CHUNK = 1 << 20
SKIP_DIRS = {".git"}


@dataclass(frozen=True, slots=True)
class ImportResult:
    repo: RepoRef
    branch: str
    commit: str
    files: int
    bytes: int
    bytes_written: int
    changed: bool


class LfsRules:
    """The filter=lfs lines of a .gitattributes file; the last matching line wins."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[pathspec.PathSpec, bool]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, *attrs = line.split()
            value: bool | None = None
            for a in attrs:
                if a == "filter=lfs":
                    value = True
                elif a in ("-filter", "!filter") or (a.startswith("filter=") and a != "filter=lfs"):
                    value = False
            if value is not None:
                self.rules.append((pathspec.PathSpec.from_lines("gitignore", [pattern]), value))

    def match(self, path: str) -> bool | None:
        result = None
        for spec, value in self.rules:
            if spec.match_file(path):
                result = value
        return result


def scan_folder(folder: Path) -> list[tuple[str, Path]]:
    """Relative '/' paths of every regular file (symlinks followed), skipping .git and .cache/huggingface."""
    if not folder.is_dir():
        raise InvalidInput(f"folder {str(folder)!r} does not exist or is not a directory")
    out: list[tuple[str, Path]] = []
    for dirpath, dirs, files in os.walk(folder, followlinks=False):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        dirs[:] = sorted(
            d for d in dirs if d not in SKIP_DIRS and not (rel_dir == "." and d == ".cache")
        )
        for name in sorted(files):
            full = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                validate_path(rel)
            except InvalidPath as e:
                raise InvalidPath(f"cannot import {str(full)!r}: {e.message}") from None
            try:
                st = full.stat()
            except OSError as e:
                raise InvalidInput(f"cannot import {str(full)!r}: {e.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"cannot import {str(full)!r}: not a regular file")
            out.append((rel, full))
    return out


def _hash_file(path: Path, progress: Callable[[int], None] | None) -> tuple[int, str, str]:
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(git_blob_header(size))
    n = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
            n += len(chunk)
            if progress:
                progress(len(chunk))
    if n != size:
        raise InvalidInput(f"{str(path)!r} changed size while it was read")
    return size, sha256.hexdigest(), sha1.hexdigest()


def _store_file(store: BlobStore, path: Path, sha256: str, size: int) -> int:
    if store.stat(sha256) is not None:
        return 0
    with store.writer() as w, open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            w.write(chunk)
        w.commit(sha256, size)
    return size


def import_folder(
    catalog: Catalog,
    store: BlobStore,
    ref: RepoRef,
    folder: Path,
    *,
    branch: str = "main",
    message: str | None = None,
    author: str = "hubmirror",
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    data_dir: Path | None = None,
) -> ImportResult:
    validate_branch(branch)
    folder = Path(folder)
    files = scan_folder(folder)
    if total:
        total(sum(p.stat().st_size for _, p in files))
    attrs = folder / ".gitattributes"
    rules = LfsRules(attrs.read_text("utf-8", "replace")) if attrs.is_file() else LfsRules("")

    def one(item: tuple[str, Path]) -> tuple[Entry, int]:
        rel, full = item
        size, sha256, sha1 = _hash_file(full, progress)
        lfs = rules.match(rel)
        if lfs is None:
            lfs = size >= LFS_THRESHOLD
        written = _store_file(store, full, sha256, size)
        if lfs:
            pointer = lfs_pointer(sha256, size)
            e = Entry(rel, "file", git_blob_sha1(pointer), size, sha256, True, len(pointer))
        else:
            e = Entry(rel, "file", sha1, size, sha256, False, None)
        return e, written

    gc_lock = GcLock(data_dir) if data_dir is not None else None
    if gc_lock:
        gc_lock.acquire()
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
            results = list(pool.map(one, files))
        return _record(catalog, ref, folder, branch, message, author, results)
    finally:
        if gc_lock:
            gc_lock.release()


def _record(
    catalog: Catalog, ref: RepoRef, folder: Path, branch: str, message: str | None, author: str,
    results: list[tuple[Entry, int]],
) -> ImportResult:
    file_entries = [e for e, _ in results]
    written = sum(w for _, w in results)

    repo = catalog.ensure_repo(ref)
    refname = branch_ref(branch)
    parent = catalog.refs(repo).get(refname)
    entries, tree = with_directories(file_entries)
    parent_commit = catalog.get_commit(repo, parent) if parent else None
    total_bytes = sum(e.size for e in file_entries)
    if parent_commit is not None and parent_commit.tree == tree:
        return ImportResult(ref, branch, parent_commit.sha, len(file_entries), total_bytes, written, False)

    now = datetime.now(timezone.utc).replace(microsecond=0)
    if message and message.strip():
        title = message.strip().splitlines()[0][:200]
        full_message = message.strip()
    else:
        title = full_message = f"Import {folder.resolve().name}"
    sha = git_commit_sha1(tree, [parent] if parent else [], author, int(now.timestamp()), full_message)
    old = {e.path: e for e in catalog.list_entries(repo, parent, recursive=True)} if parent else {}
    final = []
    for e in entries:
        prev = old.get(e.path)
        last = prev.last_commit if prev is not None and prev.oid == e.oid and prev.type == e.type else sha
        final.append(Entry(e.path, e.type, e.oid, e.size, e.sha256, e.lfs, e.pointer_size, last))
    commit = Commit(sha, [parent] if parent else [], title, full_message, author, now, tree)
    catalog.record_commit(repo, commit, final, [RefUpdate(refname, sha, expect=parent)], reason="import")
    return ImportResult(ref, branch, sha, len(file_entries), total_bytes, written, True)
