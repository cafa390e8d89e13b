"""`hubmirror import`: commit a local folder as a new commit on a branch.

LFS is decided like the Hub: a `filter=lfs` pattern in the folder's .gitattributes, else a
size of 10 MiB or more. Each file is hashed first; only blobs the store lacks are written,
and the store re-hashes them while writing, so a file that changes during the import is
refused rather than recorded with the wrong digest.

Only the folder's own files are imported: a symlink is followed only to a file inside the
folder, and each file is opened once (hashed, then stored from the same descriptor) after
checking it is still the inode the scan found, so a link swapped in later is never read.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pathspec

from .catalog import Catalog, RefUpdate
from .catalog.catalog import branch_ref
from .coord.local import as_coordinator
from .errors import DigestMismatch, InvalidInput, InvalidPath, SizeMismatch
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

_log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """One file the scan accepted, and the identity of the inode it found.

    `source` is where the file is in the folder as given (a symlink's own path when a link
    inside the folder was followed); `real` is the resolved path that is opened. `dev`/`ino`
    let the read refuse a file that was replaced after the scan.
    """

    path: str
    source: Path
    real: Path
    size: int
    dev: int
    ino: int


def scan_folder(
    folder: Path, *, skip_links: bool = False, warn: Callable[[str], None] | None = None,
) -> list[ScannedFile]:
    """Every regular file under `folder` with its '/' repo path, skipping .git and .cache/huggingface.

    A symlink to a file inside the folder is followed. A symlink that leaves the folder (directly,
    through `..` or through a chain of links), a dangling or looping one, and any symlink to a
    directory are refused with InvalidInput naming the link and where it points; with
    `skip_links` they are skipped instead and `warn` (default: a log warning) is called with a
    message naming each. Special files (fifos, sockets, devices) are always refused. Nothing
    outside the folder is ever opened: only stat'ed.
    """
    if not folder.is_dir():
        raise InvalidInput(f"folder {str(folder)!r} does not exist or is not a directory")
    root = folder.resolve()
    report = warn or _log.warning
    out: list[ScannedFile] = []
    refused: list[str] = []  # links not followed, when not skip_links: reported all at once
    stack: list[str] = [""]  # '/'-relative dirs still to list; "" is the root
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise InvalidInput(f"cannot import {str(folder / rel_dir)!r}: {e.strerror}") from None
        subdirs: list[str] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            shown = folder / rel
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise InvalidInput(f"cannot import {str(shown)!r}: {e.strerror}") from None
            if (entry.name in SKIP_DIRS or rel == ".cache") and not stat.S_ISREG(st.st_mode):
                continue  # a directory or a link to one: never listed, never followed
            real = root / rel
            if stat.S_ISLNK(st.st_mode):
                followed = _follow_link(root, Path(entry.path))
                if isinstance(followed, str):
                    if skip_links:
                        report(f"skipped {str(shown)!r}: {followed}")
                    else:
                        refused.append(f"{str(shown)!r}: {followed}")
                    continue
                real, st = followed
            elif stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"cannot import {str(shown)!r}: not a regular file")
            try:
                validate_path(rel)
            except InvalidPath as e:
                raise InvalidPath(f"cannot import {str(shown)!r}: {e.message}") from None
            out.append(ScannedFile(rel, shown, real, st.st_size, st.st_dev, st.st_ino))
        stack.extend(reversed(subdirs))
    if refused:
        n = len(refused) - 1
        more = f" (and {n} more such link{'s' if n > 1 else ''})" if n else ""
        raise InvalidInput(f"cannot import {refused[0]}{more}; --skip-links skips such links")
    return out


def _follow_link(root: Path, link: Path) -> tuple[Path, os.stat_result] | str:
    """The resolved path and lstat of a link's final target, or why the link is not followed.

    Only a target inside `root` that is not a directory is followed; a special file inside is
    returned too (and refused by the caller whatever `skip_links` says).
    """
    try:
        target = os.readlink(link)
    except OSError as e:
        return f"cannot read the symlink: {e.strerror}"
    where = f"a symlink to {target!r}"
    try:
        real = link.resolve(strict=True)
        st = os.stat(real, follow_symlinks=False)
    except (OSError, RuntimeError) as e:  # RuntimeError: a link loop, on Python < 3.13
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "a symlink loop"
        return f"{where}, which cannot be resolved ({reason})"
    inside = real.is_relative_to(root)
    if stat.S_ISDIR(st.st_mode):
        side = "inside" if inside else "outside"
        return (f"{where}, a directory {side} the folder ({str(real)!r}); "
                "hubmirror does not follow directory links")
    if not inside:
        resolves = "" if str(real) == target else f", which resolves to {str(real)!r}"
        return f"{where}{resolves}, outside the folder {str(root)!r}"
    if stat.S_ISLNK(st.st_mode):  # resolve() just said otherwise: the link changed under us
        return f"{where}, which changed while it was scanned"
    return real, st


def _open_scanned(f: ScannedFile) -> BinaryIO:
    """Open the file the scan found, refusing anything else now at its place.

    O_NOFOLLOW refuses a symlink swapped in for the file itself; comparing st_dev/st_ino with the
    scan refuses a file replaced by another (also one reached through a directory swapped for a
    link). O_NONBLOCK keeps a fifo swapped in from blocking the open.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(f.real, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidInput(f"cannot import {str(f.source)!r}: {str(f.real)!r} was replaced by a "
                               "symlink after the folder was scanned") from None
        raise InvalidInput(f"cannot import {str(f.source)!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (f.dev, f.ino) or not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"cannot import {str(f.source)!r}: {str(f.real)!r} was replaced "
                               "after the folder was scanned")
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _hash_file(fh: BinaryIO, f: ScannedFile, progress: Callable[[int], None] | None) -> tuple[int, str, str]:
    size = os.fstat(fh.fileno()).st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(git_blob_header(size))
    n = 0
    while chunk := _read(fh, f):
        sha256.update(chunk)
        sha1.update(chunk)
        n += len(chunk)
        if progress:
            progress(len(chunk))
    if n != size:
        raise InvalidInput(f"{str(f.source)!r} changed size while it was read")
    return size, sha256.hexdigest(), sha1.hexdigest()


def _store_file(store: BlobStore, fh: BinaryIO, f: ScannedFile, sha256: str, size: int) -> int:
    """Store the bytes of the file already hashed, read again from the same open file.

    The store re-hashes while writing and refuses a mismatch, so a file changed in place between
    the two reads is refused rather than stored under the wrong digest.
    """
    if store.stat(sha256) is not None:
        return 0
    fh.seek(0)
    with store.writer() as w:
        while chunk := _read(fh, f):
            w.write(chunk)
        try:
            w.commit(sha256, size)
        except (DigestMismatch, SizeMismatch):
            raise InvalidInput(f"{str(f.source)!r} changed while it was imported") from None
    return size


def _read(fh: BinaryIO, f: ScannedFile) -> bytes:
    try:
        return fh.read(CHUNK)
    except OSError as e:
        raise InvalidInput(f"cannot read {str(f.source)!r}: {e.strerror}") from None


def _lfs_rules(files: list[ScannedFile]) -> LfsRules:
    """The rules of the scanned .gitattributes, read like any other file (never a skipped link)."""
    attrs = next((f for f in files if f.path == ".gitattributes"), None)
    if attrs is None:
        return LfsRules("")
    with _open_scanned(attrs) as fh:
        data = b"".join(iter(lambda: _read(fh, attrs), b""))
    return LfsRules(data.decode("utf-8", "replace"))


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
    coord: Any = None,
    skip_links: bool = False,
    warn: Callable[[str], None] | None = None,
    private: bool | None = None,
) -> ImportResult:
    """Commit `folder` on `branch`; see scan_folder for which files, links and skips. `private`:
    True makes the repo readable only by users and groups an access rule names, False public
    again, None leaves it as it is."""
    validate_branch(branch)
    folder = Path(folder)
    files = scan_folder(folder, skip_links=skip_links, warn=warn)
    if total:
        total(sum(f.size for f in files))
    rules = _lfs_rules(files)

    def one(f: ScannedFile) -> tuple[Entry, int]:
        with _open_scanned(f) as fh:
            size, sha256, sha1 = _hash_file(fh, f, progress)
            written = _store_file(store, fh, f, sha256, size)
        lfs = rules.match(f.path)
        if lfs is None:
            lfs = size >= LFS_THRESHOLD
        if lfs:
            pointer = lfs_pointer(sha256, size)
            e = Entry(f.path, "file", git_blob_sha1(pointer), size, sha256, True, len(pointer))
        else:
            e = Entry(f.path, "file", sha1, size, sha256, False, None)
        return e, written

    gc_lock = as_coordinator(coord or data_dir).gc_lock() if (coord or data_dir) is not None else None  # type: ignore[attr-defined]
    if gc_lock:
        gc_lock.acquire()
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
            results = list(pool.map(one, files))
        res = _record(catalog, ref, folder, branch, message, author, results)
        if private is not None:
            repo = catalog.get_repo(ref)
            if repo is not None:
                catalog.set_visibility(repo, private=private, gated=repo.gated)
        return res
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
