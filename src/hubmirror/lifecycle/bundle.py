"""Air-gapped transfer.

A bundle is a tar stream, plain or compressed (gzip, bzip2, xz):

```
hubmirror-bundle.json      manifest: repos, their commits with every entry, refs; every blob's sha256+size
blobs/<sha256>             one member per blob
```

`import_bundle` trusts nothing in it, and writes nothing until the whole manifest has passed:

1. the manifest comes first, is at most `max_manifest` bytes, and is validated whole against a strict
   schema, then cross-checked against itself, the store and the catalog (`manifest.py`);
2. the bundle is bounded: the bytes of blobs the store lacks must fit the free space (minus `min_free`)
   and `max_bytes`, and a compressed bundle may not expand more than `max_ratio` times its size on
   disk. The expanded stream can never run past what the manifest declares;
3. a regular file's oid must be the git blob sha1 of its bytes: a blob the store already has is read
   once to prove it, before anything is written.

Then only listed `blobs/<sha256>` regular files of the declared size are accepted (no absolute paths,
`..`, links or devices; nothing is ever extracted to a path taken from the archive), each verified as
the store writes it (sha256, and the git blob sha1 its regular files record, in the same pass), and the
catalog records everything in one transaction. All or nothing: on any failure (a refusal, a damaged
archive, a database error, Ctrl-C) every blob this import published is deleted again before the GcLock
is released.

`export_hf_cache` writes the standard huggingface_hub cache layout (blobs/, snapshots/, refs/)
so that a machine with no server can load with HF_HUB_OFFLINE=1.

The manifest's schema and cross-checks live in manifest.py, split out when this module grew past
DESIGN.md's ~600 lines; their public names are re-exported here.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..catalog import Catalog, RepoRow
from ..catalog.lifecycle import ImportedRepo
from ..coord.local import as_coordinator
from ..errors import (
    DigestMismatch,
    HubMirrorError,
    InsufficientStorage,
    InvalidBundle,
    RepoNotFound,
    SizeMismatch,
)
from ..model.entries import Commit, Entry
from ..model.gitobj import git_blob_header
from ..model.names import RepoRef, is_commit_sha
from ..store import BlobStore
from .manifest import (
    MANIFEST,
    MAX_MANIFEST,
    BundleBlob,
    BundleCommit,
    BundleRepo,
    Manifest,
    Plan,
    check_oid,
    check_stored_oids,
    cross_check,
    parse_manifest,
)

__all__ = [
    "MANIFEST",
    "MAX_MANIFEST",
    "BundleBlob",
    "BundleCommit",
    "BundleRepo",
    "BundleReport",
    "Manifest",
    "export_bundle",
    "export_hf_cache",
    "import_bundle",
    "parse_manifest",
]

log = logging.getLogger("hubmirror.bundle")

_BLOB_NAME = re.compile(r"^blobs/([0-9a-f]{64})$")

# -- bounds, before anything is written ------------------------------------------------------


def _check_bounds(stream: _Expanded, manifest_size: int, plan: Plan, data: Path, *, max_bytes: int | None,
                  max_ratio: float, min_free: int, store: BlobStore) -> None:
    expanded = manifest_size + sum(plan.listed.values())
    if stream.compressed and max_ratio > 0 and expanded > max_ratio * stream.on_disk:
        raise InvalidBundle(
            f"bundle {str(stream.path)!r} declares {expanded} bytes expanded from {stream.on_disk} compressed "
            f"bytes, more than {max_ratio:g} times (--max-ratio): refused as a decompression bomb")
    new = sum(plan.new.values())
    if max_bytes is not None and new > max_bytes:
        raise InvalidBundle(f"bundle {str(stream.path)!r} would add {new} bytes of new blobs, more than "
                            f"--max-bytes {max_bytes}")
    free = store.free_bytes()
    if free is not None and new > free - min_free:
        raise InsufficientStorage(f"bundle {str(stream.path)!r} would add {new} bytes of new blobs; the store has "
                                  f"{free} bytes free and keeps {min_free} in reserve")


@dataclass
class BundleReport:
    repos: int
    commits: int
    blobs: int
    bytes: int
    blobs_new: int = 0


def _select(catalog: Catalog, ref: RepoRef, revision: str | None) -> tuple[RepoRow, list[str], dict[str, str]]:
    repo = catalog.get_repo(ref)
    if repo is None:
        raise RepoNotFound(f"Repository not found: {ref}")
    refs = catalog.refs(repo)
    if revision is None:
        commits = list(dict.fromkeys([*refs.values(), *(p["commit"] for p in catalog.pins()
                                                        if p["repo_id"] == ref.repo_id and p["repo_type"] == ref.repo_type.value)]))
        return repo, commits, refs
    commit = catalog.resolve(repo, revision)
    keep = {n: c for n, c in refs.items() if c == commit}
    if not is_commit_sha(revision) and not keep:
        keep = {revision if revision.startswith("refs/") else f"refs/heads/{revision}": commit}
    return repo, [commit], keep


def export_bundle(
    catalog: Catalog,
    store: BlobStore,
    wanted: list[tuple[RepoRef, str | None]],
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> BundleReport:
    repos_doc: list[dict[str, Any]] = []
    blobs: dict[str, int] = {}
    ncommits = 0
    for ref, revision in wanted:
        repo, commits, refs = _select(catalog, ref, revision)
        cdocs = []
        for sha in commits:
            c = catalog.get_commit(repo, sha)
            assert c is not None
            entries = catalog.list_entries(repo, sha, recursive=True)
            for e in entries:
                if not e.is_file:
                    continue
                if not e.sha256 or store.stat(e.sha256) is None:
                    raise HubMirrorError(f"cannot export {ref}@{sha[:8]}: {e.path!r} is not stored here "
                                         f"(pull it through or sync it first)")
                blobs[e.sha256] = e.size
            cdocs.append({
                "sha": c.sha, "parents": c.parents, "tree": c.tree, "title": c.title, "message": c.message,
                "author": c.author, "date": c.date.isoformat(),
                "entries": [[e.path, e.type, e.oid, e.size, e.sha256, e.lfs, e.pointer_size, e.last_commit]
                            for e in entries],
            })
            ncommits += 1
        repos_doc.append({"repo_type": ref.repo_type.value, "repo_id": ref.repo_id, "origin": repo.origin,
                          "commits": cdocs, "refs": refs})
    manifest = json.dumps({
        "format": "hubmirror-bundle", "version": 1, "created_at": datetime.now(UTC).isoformat(),
        "repos": repos_doc, "blobs": [{"sha256": s, "size": n} for s, n in blobs.items()],
    }).encode()
    if total:
        total(sum(blobs.values()))
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST, len(manifest), io.BytesIO(manifest))
        for sha, size in blobs.items():
            _add(tar, f"blobs/{sha}", size, _BlobReader(store.read(sha), progress))
        tar.close()
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return BundleReport(len(repos_doc), ncommits, len(blobs), sum(blobs.values()))


def _add(tar: tarfile.TarFile, name: str, size: int, fileobj: IO[bytes] | io.RawIOBase) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = int(time.time())
    tar.addfile(info, fileobj)


class _BlobReader(io.RawIOBase):
    """A blob's chunks as a file object, for tarfile (which reads it in pieces)."""

    def __init__(self, chunks: Iterator[bytes], progress: Callable[[int], None] | None) -> None:
        self._chunks = chunks
        self._buf = b""
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        if self._progress:
            self._progress(n)
        return n


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/") or "\\" in name or "\x00" in name:
        return "path escapes the bundle ('..' or a backslash)"
    if member.issym() or member.islnk():
        return "links are not allowed"
    if member.isdev() or member.ischr() or member.isblk() or member.isfifo():
        return "devices and fifos are not allowed"
    if not member.isreg() or member.issparse():
        return "only regular files are allowed"
    if member.size < 0:
        return "negative size"
    return None


# -- reading the archive -----------------------------------------------------------------------

_HEADERS = 1 << 20  # how far the stream may run past a member's data: the next headers and tarfile's read-ahead
_COMPRESSED: tuple[tuple[bytes, Callable[[IO[bytes]], io.BufferedIOBase]], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", lambda f: bz2.BZ2File(f)),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),  # noqa: SIM115 - closed by _Expanded.close()
)


class _Expanded(io.RawIOBase):
    """The bundle's tar bytes, decompressed here (not by tarfile) so that no more than `limit` of them
    are ever produced: a member, a pax header (which tarfile reads whole, into memory) or a
    decompression bomb cannot run past it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.expanded = 0
        self.limit = _HEADERS
        self._file: io.BufferedReader | None = None
        self._src: io.BufferedIOBase | None = None
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
            self.on_disk = os.fstat(self._file.fileno()).st_size
            head = self._file.peek(6)[:6]
        except OSError as e:
            self.close()
            raise InvalidBundle(f"cannot read bundle {str(path)!r}: {e.strerror or e}") from None
        self._src = self._file
        self.compressed = False
        for magic, opener in _COMPRESSED:
            if head.startswith(magic):
                self._src, self.compressed = opener(self._file), True

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        room = self.limit - self.expanded
        if room <= 0:
            if not self._read(view[:1]):
                return 0  # the end, exactly at the limit
            raise InvalidBundle(f"bundle {str(self.path)!r} refused: tar headers run more than {_HEADERS} bytes "
                                f"past the member before them (at byte {self.expanded} of the archive)")
        n = self._read(view[: min(len(view), room)])
        self.expanded += n
        return n

    def _read(self, view: memoryview) -> int:
        assert self._src is not None
        if INTERRUPTED.is_set():  # Ctrl-C whose KeyboardInterrupt was lost (raised in a GC callback)
            raise KeyboardInterrupt
        try:
            return self._src.readinto(view)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
            raise InvalidBundle(f"bundle {str(self.path)!r} is damaged: {e}") from None

    def close(self) -> None:
        try:
            for f in {id(f): f for f in (self._src, self._file) if f is not None}.values():
                f.close()
        finally:
            super().close()


# Set by the CLI's SIGINT handler: a KeyboardInterrupt that lands in a weakref or __del__ callback
# is printed and dropped by Python, and the import would go on reading a pipe that never ends.
INTERRUPTED = threading.Event()


def _end(member: tarfile.TarInfo) -> int:
    """Where a member's data (padded to 512-byte blocks) ends in the expanded archive."""
    return member.offset_data + -(-member.size // 512) * 512


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """tarfile's own complaints (bad headers, a truncated archive) as InvalidBundle."""
    try:
        yield
    except tarfile.TarError as e:
        raise InvalidBundle(f"bundle {str(path)!r} is damaged: {e}") from None


# -- import ------------------------------------------------------------------------------------


def import_bundle(
    catalog: Catalog,
    store: BlobStore,
    coord: Any,
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    max_manifest: int = MAX_MANIFEST,
    max_bytes: int | None = None,
    max_ratio: float = 100.0,
    min_free: int = 1 << 30,
) -> BundleReport:
    """Import a bundle, all or nothing (see the module docstring). InvalidBundle for a bundle that is
    refused, InsufficientStorage when its new blobs do not fit; then nothing was recorded or kept."""
    published: list[str] = []  # blobs this import added to the store: removed again if it fails
    with _Expanded(path) as stream, as_coordinator(coord).gc_lock():  # type: ignore[attr-defined]
        try:
            return _import(catalog, store, Path("."), stream, published, progress=progress, total=total,
                           max_manifest=max_manifest, max_bytes=max_bytes, max_ratio=max_ratio, min_free=min_free)
        except BaseException:
            _unpublish(catalog, store, published)
            raise


def _import(
    catalog: Catalog,
    store: BlobStore,
    data: Path,
    stream: _Expanded,
    published: list[str],
    *,
    progress: Callable[[int], None] | None,
    total: Callable[[int], None] | None,
    max_manifest: int,
    max_bytes: int | None,
    max_ratio: float,
    min_free: int,
) -> BundleReport:
    path = stream.path
    with _reading(path):
        tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - holds nothing the stream does not
        members = iter(tar)
        first = next(members, None)
    if first is None:
        raise InvalidBundle(f"bundle {str(path)!r} is empty")
    why = _unsafe(first)
    if why:
        raise InvalidBundle(f"bundle member {first.name!r} refused: {why}")
    if first.name != MANIFEST:
        raise InvalidBundle(f"bundle must start with {MANIFEST}, found {first.name!r}")
    if first.size > max_manifest:
        raise InvalidBundle(f"bundle manifest is {first.size} bytes, more than the limit of {max_manifest} "
                            f"(--max-manifest)")
    stream.limit = _end(first) + _HEADERS
    with _reading(path):
        fh = tar.extractfile(first)
        assert fh is not None
        raw = fh.read(max_manifest + 1)
    if len(raw) > max_manifest:
        raise InvalidBundle(f"bundle manifest is more than {max_manifest} bytes (--max-manifest)")
    manifest = parse_manifest(raw)
    del raw
    plan = cross_check(manifest, catalog, store)
    _check_bounds(stream, first.size, plan, data, max_bytes=max_bytes, max_ratio=max_ratio, min_free=min_free, store=store)
    stored = [s for s in plan.oids if s not in plan.new]  # regular files' blobs the store has: read each once
    check_stored_oids(plan, store, stored)
    proven = set(stored)  # blobs whose regular files' oids are proven
    if total:
        total(sum(plan.listed.values()))

    seen: set[str] = set()
    while True:
        with _reading(path):
            member = next(members, None)
        if member is None:
            break
        why = _unsafe(member)
        if why:
            raise InvalidBundle(f"bundle member {member.name!r} refused: {why}")
        m = _BLOB_NAME.match(member.name)
        if not m or m.group(1) not in plan.listed:
            raise InvalidBundle(f"bundle member {member.name!r} refused: not a blob listed in the manifest")
        sha = m.group(1)
        if sha in seen:
            raise InvalidBundle(f"bundle member {member.name!r} refused: it appears twice")
        seen.add(sha)
        if member.size != plan.listed[sha]:
            raise InvalidBundle(f"bundle member {member.name!r}: size {member.size} differs from the manifest's "
                                f"{plan.listed[sha]}")
        stream.limit = _end(member) + _HEADERS  # so the archive never expands past what the manifest declares
        if store.stat(sha) is not None:
            if progress:
                progress(member.size)
            continue  # stored already: tarfile skips the bytes
        _write_blob(store, tar, member, path, plan, published, progress)
        proven.add(sha)  # _write_blob checked the oids as the bytes streamed in

    missing = [s for s in plan.listed if store.stat(s) is None]
    if missing:
        raise InvalidBundle(f"bundle lacks {len(missing)} blob(s) its manifest lists, e.g. {missing[0]}")
    gone = [s for s in plan.used - plan.listed.keys() if store.stat(s) is None]
    if gone:
        raise InvalidBundle(f"bundle relies on blob {gone[0]} of this store, which was removed during the import")
    # a listed blob another writer stored while this import ran was skipped: its oids are proven from the store
    check_stored_oids(plan, store, [s for s in plan.oids if s not in proven])
    catalog.record_import((_imported(r, path) for r in manifest.repos), reason="import-bundle",
                          action="import-bundle")
    ncommits = sum(len(r.commits) for r in manifest.repos)
    return BundleReport(len(manifest.repos), ncommits, len(plan.listed), sum(plan.listed.values()), len(published))


def _write_blob(store: BlobStore, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, plan: Plan,
                published: list[str], progress: Callable[[int], None] | None) -> None:
    """Stream one member into the store; it is published only if it hashes to its name, and to the git
    oid of every regular file that uses it (hashed in the same pass)."""
    sha = member.name.removeprefix("blobs/")
    with _reading(path):
        fh = tar.extractfile(member)
    assert fh is not None
    git = hashlib.sha1(git_blob_header(member.size)) if sha in plan.oids else None
    with store.writer(sha) as w:
        while True:
            with _reading(path):
                chunk = fh.read(1 << 20)
            if not chunk:
                break
            w.write(chunk)
            if git is not None:
                git.update(chunk)
            if progress:
                progress(len(chunk))
        if git is not None and w.sha256 == sha:  # else commit refuses the bytes themselves, below
            check_oid(plan, sha, git.hexdigest())  # before publishing: a wrong oid leaves nothing behind
        if store.stat(sha) is not None:
            return  # another writer published it meanwhile: it is theirs, not ours to remove
        published.append(sha)  # before commit: an interrupt right after publishing still removes it
        try:
            info = w.commit(sha, member.size)
        except (DigestMismatch, SizeMismatch) as e:
            published.pop()
            raise InvalidBundle(f"bundle member {member.name!r}: {e.message}") from None
        if not info.created:  # another writer published it meanwhile: theirs, not ours to remove
            published.pop()


def _imported(r: BundleRepo, path: Path) -> ImportedRepo:
    commits = ((Commit(c.sha, list(c.parents), c.title, c.message, c.author, c.date, c.tree),
                (Entry(*e) for e in c.entries)) for c in r.commits)
    return ImportedRepo(r.ref, "mirror" if r.origin == "proxy" else r.origin, commits, r.refs,
                        {"bundle": str(path), "commits": len(r.commits)})


def _unpublish(catalog: Catalog, store: BlobStore, published: list[str]) -> None:
    """Remove the blobs a failed import published, unless a catalog row (another writer's) uses one."""
    for sha in published:
        try:
            used = catalog.where_is(sha) is not None
        except Exception:  # noqa: BLE001
            used = False  # the catalog is what failed: nothing of ours references it
        if not used:
            try:
                store.delete(sha)
            except Exception as e:  # noqa: BLE001 - keep removing the others; gc removes what is left
                log.error("could not remove blob %s of a failed import: %s", sha, e)


def export_hf_cache(
    catalog: Catalog,
    store: BlobStore,
    wanted: list[tuple[RepoRef, str | None]],
    cache: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> BundleReport:
    """Write the huggingface_hub cache layout: {type}s--ns--name/{blobs,snapshots,refs}."""
    ncommits = nblobs = nbytes = 0
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    for ref, revision in wanted:
        repo, commits, refs = _select(catalog, ref, revision)
        root = cache / f"{ref.repo_type.plural}--{ref.repo_id.replace('/', '--')}"
        for sha in commits:
            ncommits += 1
            for e in catalog.list_entries(repo, sha, recursive=True, files_only=True):
                if not e.sha256 or store.stat(e.sha256) is None:
                    raise HubMirrorError(f"cannot export {ref}@{sha[:8]}: {e.path!r} is not stored here")
                blob = root / "blobs" / e.etag()
                if not blob.exists() or blob.stat().st_size != e.size:
                    blob.parent.mkdir(parents=True, exist_ok=True)
                    tmp = blob.with_name(blob.name + ".incomplete")
                    with open(tmp, "wb") as fh:
                        for chunk in store.read(e.sha256):
                            fh.write(chunk)
                            if progress:
                                progress(len(chunk))
                    os.replace(tmp, blob)
                    nblobs += 1
                    nbytes += e.size
                link = root / "snapshots" / sha / e.path
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(os.path.relpath(blob, link.parent))
        for name, sha in refs.items():
            if sha not in commits:
                continue
            short = name.removeprefix("refs/heads/").removeprefix("refs/tags/")
            target = root / "refs" / short
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(sha)
        if revision is not None and not is_commit_sha(revision):
            target = root / "refs" / revision
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(commits[0])
    return BundleReport(len(wanted), ncommits, nblobs, nbytes)
