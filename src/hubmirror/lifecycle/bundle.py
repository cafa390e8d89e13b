"""Air-gapped transfer.

A bundle is a tar stream, plain or compressed (gzip, bzip2, xz):

```
hubmirror-bundle.json      manifest: repos, their commits with every entry, refs; every blob's sha256+size
blobs/<sha256>             one member per blob
```

`import_bundle` trusts nothing in it, and writes nothing until the whole manifest has passed:

1. the manifest comes first, is at most `max_manifest` bytes, and is validated whole against a strict
   schema (`Manifest`): no unknown fields, no coercion ("ten" is not a size, `true` is not 1), every
   repo id, path and ref name checked against the Hub's grammar;
2. it is cross-checked: every file's blob is listed in the bundle or already stored, with the entry's
   size; every ref names a commit of its repo in the bundle or in the catalog;
3. the bundle is bounded: the bytes of blobs the store lacks must fit the free space (minus `min_free`)
   and `max_bytes`, and a compressed bundle may not expand more than `max_ratio` times its size on
   disk. The expanded stream can never run past what the manifest declares.

Then only listed `blobs/<sha256>` regular files of the declared size are accepted (no absolute paths,
`..`, links or devices; nothing is ever extracted to a path taken from the archive), each verified as
the store writes it, and the catalog records everything in one transaction. All or nothing: on any
failure (a refusal, a damaged archive, a database error, Ctrl-C) every blob this import published is
deleted again before the GcLock is released.

`export_hf_cache` writes the standard huggingface_hub cache layout (blobs/, snapshots/, refs/)
so that a machine with no server can load with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import ErrorDetails

from ..catalog import Catalog, RepoRow
from ..catalog.lifecycle import ImportedRepo
from ..errors import (
    DigestMismatch,
    HubMirrorError,
    InsufficientStorage,
    InvalidBundle,
    InvalidInput,
    RepoNotFound,
    SizeMismatch,
)
from ..locks import GcLock
from ..model.entries import Commit, Entry
from ..model.names import (
    RepoRef,
    RepoType,
    is_commit_sha,
    validate_path,
    validate_repo_id,
    validate_revision,
)
from ..store import BlobStore

log = logging.getLogger("hubmirror.bundle")

MANIFEST = "hubmirror-bundle.json"
MAX_MANIFEST = 32 << 20
MAX_SIZE = (1 << 63) - 1  # the catalog's BigInteger
MAX_REPOS = 10_000
MAX_COMMITS = 100_000  # per repo
MAX_ENTRIES = 1_000_000  # per commit
MAX_REFS = 100_000  # per repo
MAX_BLOBS = 1_000_000
_BLOB_NAME = re.compile(r"^blobs/([0-9a-f]{64})$")
_REF_NAME = re.compile(r"^refs/(heads/.+|tags/.+|pr/[0-9]+|convert/.+)$")
_ENTRY_FIELDS = ("path", "type", "oid", "size", "sha256", "lfs", "pointer_size", "last_commit")

# -- the manifest's schema ---------------------------------------------------------------------


def _rule(check: Callable[[Any], object]) -> AfterValidator:
    """A pydantic validator from one of our checks (which raise InvalidInput with a message)."""

    def run(v: Any) -> Any:
        try:
            check(v)
        except InvalidInput as e:
            raise ValueError(e.message) from None
        return v

    return AfterValidator(run)


def _hex(n: int) -> AfterValidator:
    pattern = re.compile(f"^[0-9a-f]{{{n}}}$")

    def check(v: str) -> None:
        if not pattern.match(v):
            raise InvalidInput(f"expected {n} lowercase hex digits")

    return _rule(check)


def _ref_name(v: str) -> None:
    validate_revision(v)
    if not _REF_NAME.match(v):
        raise InvalidInput("expected a full ref name: refs/heads/..., refs/tags/..., refs/pr/N or refs/convert/...")


def _version(v: int) -> None:
    if v != 1:
        raise InvalidInput("this hubmirror reads bundles of version 1")


def _iso_date(v: object) -> datetime:
    if not isinstance(v, str):
        raise ValueError("expected an ISO-8601 date string")  # noqa: TRY004 - pydantic reports ValueError
    try:
        d = datetime.fromisoformat(v)
        return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ValueError("not an ISO-8601 date") from None


Hex40 = Annotated[str, _hex(40)]
Sha256 = Annotated[str, _hex(64)]
Size = Annotated[int, Field(ge=0, le=MAX_SIZE)]
IsoDate = Annotated[datetime, PlainValidator(_iso_date)]
# [path, type, oid, size, sha256, lfs, pointer_size, last_commit], in the order of model.entries.Entry
EntryRow = tuple[
    Annotated[str, _rule(validate_path)], Literal["file", "directory"], Hex40, Size, Sha256 | None, bool,
    Size | None, Hex40 | None,
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class BundleCommit(_Strict):
    sha: Hex40
    parents: Annotated[list[Hex40], Field(max_length=1000)]
    tree: Hex40 | None
    title: str
    message: str
    author: str
    date: IsoDate
    entries: Annotated[list[EntryRow], Field(max_length=MAX_ENTRIES)]


class BundleRepo(_Strict):
    repo_type: Literal["model", "dataset", "space"]
    repo_id: Annotated[str, _rule(validate_repo_id)]
    origin: Literal["local", "mirror", "proxy"]
    commits: Annotated[list[BundleCommit], Field(max_length=MAX_COMMITS)]
    refs: Annotated[dict[Annotated[str, _rule(_ref_name)], Hex40], Field(max_length=MAX_REFS)]

    @property
    def ref(self) -> RepoRef:
        return RepoRef(RepoType(self.repo_type), self.repo_id)


class BundleBlob(_Strict):
    sha256: Sha256
    size: Size


class Manifest(_Strict):
    format: Literal["hubmirror-bundle"]
    version: Annotated[int, _rule(_version)]
    created_at: IsoDate
    repos: Annotated[list[BundleRepo], Field(max_length=MAX_REPOS)]
    blobs: Annotated[list[BundleBlob], Field(max_length=MAX_BLOBS)]


def parse_manifest(data: bytes) -> Manifest:
    """Validate a manifest straight from its bytes; InvalidBundle names the field path of what is wrong."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        shown = "; ".join(_describe(err) for err in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidBundle(f"invalid bundle manifest: {shown}{more}") from None


def _describe(err: ErrorDetails) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] not in ("missing", "json_invalid") and (value is None or isinstance(value, str | int | float)):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            got = f"a number of {value.bit_length()} bits"
        else:
            got = repr(value[:60] + "..." if isinstance(value, str) and len(value) > 60 else value)
        if got not in msg:
            msg += f" (got {got})"
    return f"{_where(err['loc'])}: {msg}"


def _where(loc: tuple[int | str, ...]) -> str:
    """('repos', 0, 'commits', 1, 'entries', 3, 3) -> 'repos[0].commits[1].entries[3].size'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            in_entry = i >= 2 and loc[i - 2] == "entries" and isinstance(loc[i - 1], int)
            out += f".{_ENTRY_FIELDS[part]}" if in_entry and part < len(_ENTRY_FIELDS) else f"[{part}]"
        elif part == "[key]":
            out += " (the name)"
        elif i >= 1 and loc[i - 1] == "refs":
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or MANIFEST


# -- cross-checks and bounds, before anything is written ------------------------------------------


@dataclass
class _Plan:
    listed: dict[str, int]  # every blob the manifest lists -> size
    new: dict[str, int]  # the listed blobs the store lacks: what this import writes
    used: set[str]  # every blob a file entry uses


def _cross_check(m: Manifest, catalog: Catalog, store: BlobStore) -> _Plan:
    listed: dict[str, int] = {}
    for i, b in enumerate(m.blobs):
        if b.sha256 in listed:
            raise InvalidBundle(f"invalid bundle manifest: blobs[{i}]: {b.sha256} is listed twice")
        listed[b.sha256] = b.size
    stored: dict[str, int | None] = {}

    def stored_size(sha: str) -> int | None:
        if sha not in stored:
            info = store.stat(sha)
            stored[sha] = info.size if info else None
        return stored[sha]

    for i, b in enumerate(m.blobs):
        have = stored_size(b.sha256)
        if have is not None and have != b.size:
            raise InvalidBundle(f"invalid bundle manifest: blobs[{i}]: {b.sha256} is listed with {b.size} bytes, "
                                f"but this store's copy has {have}")
    used: set[str] = set()
    # a repo appears once per exported revision (`export acme/x@v1 acme/x@main`); its commits once per repo
    commits_of: dict[RepoRef, dict[str, BundleCommit]] = {}
    for ri, r in enumerate(m.repos):
        ref = r.ref
        known = commits_of.setdefault(ref, {})
        here: set[str] = set()
        for ci, c in enumerate(r.commits):
            at = f"repos[{ri}].commits[{ci}]"
            if c.sha in here:
                raise InvalidBundle(f"invalid bundle manifest: {at}: {ref} commit {c.sha} is listed twice")
            here.add(c.sha)
            if c.sha in known:
                if known[c.sha] != c:
                    raise InvalidBundle(f"invalid bundle manifest: {at}: {ref} commit {c.sha} is listed again "
                                        f"with other content")
                continue
            known[c.sha] = c
            used |= _check_entries(c, f"{ref} commit {c.sha}", at, listed, stored_size)
    for ri, r in enumerate(m.repos):
        repo = catalog.get_repo(r.ref)
        for name, target in r.refs.items():
            if target not in commits_of[r.ref] and (repo is None or catalog.get_commit(repo, target) is None):
                raise InvalidBundle(f"invalid bundle manifest: {r.ref}: ref {name} points at {target}, a commit "
                                    f"neither in the bundle nor in this catalog (repos[{ri}].refs[{name!r}])")
    unused = [s for s in listed if s not in used]
    if unused:
        raise InvalidBundle(f"invalid bundle manifest: {len(unused)} listed blob(s) are used by no entry, "
                            f"e.g. {unused[0]}")
    return _Plan(listed, {s: n for s, n in listed.items() if stored[s] is None}, used)


def _check_entries(c: BundleCommit, what: str, at: str, listed: dict[str, int],
                   stored_size: Callable[[str], int | None]) -> set[str]:
    """Every path once; a file's blob listed in the bundle or stored, with the entry's size. Returns the blobs used."""
    used: set[str] = set()
    paths: set[str] = set()
    for ei, (path, kind, _oid, size, sha256, _lfs, _psize, _last) in enumerate(c.entries):
        where = f"invalid bundle manifest: {what}: {path!r} ({at}.entries[{ei}])"
        if path in paths:
            raise InvalidBundle(f"{where} is listed twice")
        paths.add(path)
        if kind == "directory":
            if sha256 is not None:
                raise InvalidBundle(f"{where}: a directory has no sha256")
            continue
        if sha256 is None:
            raise InvalidBundle(f"{where}: sha256 is null; a file needs the sha256 of its content")
        used.add(sha256)
        blob = listed.get(sha256)
        if blob is None:
            blob = stored_size(sha256)
        if blob is None:
            raise InvalidBundle(f"{where}: its blob {sha256} is neither in the bundle nor in this store")
        if blob != size:
            raise InvalidBundle(f"{where}: size {size} disagrees with its blob {sha256} of {blob} bytes")
    return used


def _check_bounds(stream: _Expanded, manifest_size: int, plan: _Plan, data: Path, *, max_bytes: int | None,
                  max_ratio: float, min_free: int) -> None:
    expanded = manifest_size + sum(plan.listed.values())
    if stream.compressed and max_ratio > 0 and expanded > max_ratio * stream.on_disk:
        raise InvalidBundle(
            f"bundle {str(stream.path)!r} declares {expanded} bytes expanded from {stream.on_disk} compressed "
            f"bytes, more than {max_ratio:g} times (--max-ratio): refused as a decompression bomb")
    new = sum(plan.new.values())
    if max_bytes is not None and new > max_bytes:
        raise InvalidBundle(f"bundle {str(stream.path)!r} would add {new} bytes of new blobs, more than "
                            f"--max-bytes {max_bytes}")
    free = shutil.disk_usage(data).free
    if new > free - min_free:
        raise InsufficientStorage(f"bundle {str(stream.path)!r} would add {new} bytes of new blobs; {data} has "
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
        "format": "hubmirror-bundle", "version": 1, "created_at": datetime.now(timezone.utc).isoformat(),
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


def _add(tar: tarfile.TarFile, name: str, size: int, fileobj: IO[bytes]) -> None:
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
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),
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
    data: Path,
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
    with _Expanded(path) as stream, GcLock(data):
        try:
            return _import(catalog, store, data, stream, published, progress=progress, total=total,
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
    plan = _cross_check(manifest, catalog, store)
    _check_bounds(stream, first.size, plan, data, max_bytes=max_bytes, max_ratio=max_ratio, min_free=min_free)
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
        _write_blob(store, tar, member, path, published, progress)

    missing = [s for s in plan.listed if store.stat(s) is None]
    if missing:
        raise InvalidBundle(f"bundle lacks {len(missing)} blob(s) its manifest lists, e.g. {missing[0]}")
    gone = [s for s in plan.used - plan.listed.keys() if store.stat(s) is None]
    if gone:
        raise InvalidBundle(f"bundle relies on blob {gone[0]} of this store, which was removed during the import")
    catalog.record_import((_imported(r, path) for r in manifest.repos), reason="import-bundle",
                          action="import-bundle")
    ncommits = sum(len(r.commits) for r in manifest.repos)
    return BundleReport(len(manifest.repos), ncommits, len(plan.listed), sum(plan.listed.values()), len(published))


def _write_blob(store: BlobStore, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, published: list[str],
                progress: Callable[[int], None] | None) -> None:
    """Stream one member into the store; it is published only if it hashes to its name."""
    sha = member.name.removeprefix("blobs/")
    with _reading(path):
        fh = tar.extractfile(member)
    assert fh is not None
    with store.writer() as w:
        while True:
            with _reading(path):
                chunk = fh.read(1 << 20)
            if not chunk:
                break
            w.write(chunk)
            if progress:
                progress(len(chunk))
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
