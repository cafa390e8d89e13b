"""Air-gapped transfer.

A bundle is a tar stream:

```
hubmirror-bundle.json      manifest: repos, their commits with every entry, refs; every blob's sha256+size
blobs/<sha256>             one member per blob, in manifest order
```

`import_bundle` reads it as a stream, accepts only those member names and regular files
(no absolute paths, `..`, links or devices), verifies every blob's sha256 and size as the store
writes it, and records the catalog only when every blob is in place. Nothing is ever extracted to
a path taken from the archive.

`export_hf_cache` writes the standard huggingface_hub cache layout (blobs/, snapshots/, refs/)
so that a machine with no server can load with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..catalog import Catalog, RefUpdate, RepoRow
from ..errors import HubMirrorError, InvalidBundle, RepoNotFound
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
from ..store.base import SHA256_RE

MANIFEST = "hubmirror-bundle.json"
MAX_MANIFEST = 512 << 20
_BLOB_NAME = re.compile(r"^blobs/([0-9a-f]{64})$")



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
    if not member.isreg():
        return "only regular files are allowed"
    return None


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidBundle(f"bundle manifest is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != "hubmirror-bundle" or doc.get("version") != 1:
        raise InvalidBundle("not a hubmirror bundle (format/version)")
    for b in doc.get("blobs", []):
        if not SHA256_RE.match(str(b.get("sha256", ""))) or not isinstance(b.get("size"), int) or b["size"] < 0:
            raise InvalidBundle(f"bundle manifest lists an invalid blob {b!r}")
    for r in doc.get("repos", []):
        validate_repo_id(str(r.get("repo_id")))
        RepoType.parse(str(r.get("repo_type")))
        if r.get("origin") not in ("local", "mirror", "proxy"):
            raise InvalidBundle(f"bundle manifest: invalid origin {r.get('origin')!r}")
        for name, commit in (r.get("refs") or {}).items():
            validate_revision(str(name))
            if not is_commit_sha(str(commit)):
                raise InvalidBundle(f"bundle manifest: ref {name!r} points at an invalid commit")
        for c in r.get("commits", []):
            if not is_commit_sha(str(c.get("sha"))) or not all(is_commit_sha(str(p)) for p in c.get("parents", [])):
                raise InvalidBundle("bundle manifest: invalid commit sha")
            for e in c.get("entries", []):
                if not isinstance(e, list) or len(e) != 8:
                    raise InvalidBundle("bundle manifest: malformed entry")
                validate_path(str(e[0]))
                if e[1] not in ("file", "directory") or (e[4] is not None and not SHA256_RE.match(str(e[4]))):
                    raise InvalidBundle(f"bundle manifest: malformed entry {e[0]!r}")
    return doc


def import_bundle(
    catalog: Catalog,
    store: BlobStore,
    data: Path,
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> BundleReport:
    try:
        tar = tarfile.open(path, mode="r|*")
    except (OSError, tarfile.TarError) as e:
        raise InvalidBundle(f"cannot read bundle {str(path)!r}: {e}") from None
    with GcLock(data), tar:
        doc: dict[str, Any] | None = None
        expected: dict[str, int] = {}
        seen: set[str] = set()
        new = 0
        try:
            for member in tar:
                why = _unsafe(member)
                if why:
                    raise InvalidBundle(f"bundle member {member.name!r} refused: {why}")
                if doc is None:
                    if member.name != MANIFEST or member.size > MAX_MANIFEST:
                        raise InvalidBundle(f"bundle must start with {MANIFEST}, found {member.name!r}")
                    fh = tar.extractfile(member)
                    assert fh is not None
                    doc = _parse_manifest(fh.read())
                    expected = {b["sha256"]: b["size"] for b in doc.get("blobs", [])}
                    if total:
                        total(sum(expected.values()))
                    continue
                m = _BLOB_NAME.match(member.name)
                if not m or m.group(1) not in expected or m.group(1) in seen:
                    raise InvalidBundle(f"bundle member {member.name!r} refused: not a blob listed in the manifest")
                sha = m.group(1)
                seen.add(sha)
                if member.size != expected[sha]:
                    raise InvalidBundle(f"bundle member {member.name!r}: size {member.size} differs from the manifest")
                if store.stat(sha) is not None:
                    if progress:
                        progress(member.size)
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                with store.writer() as w:
                    while chunk := fh.read(1 << 20):
                        w.write(chunk)
                        if progress:
                            progress(len(chunk))
                    w.commit(sha, member.size)  # DigestMismatch/SizeMismatch: nothing is published
                new += 1
        except tarfile.TarError as e:
            raise InvalidBundle(f"bundle {str(path)!r} is damaged: {e}") from None
        if doc is None:
            raise InvalidBundle(f"bundle {str(path)!r} is empty")
        missing = [s for s in expected if store.stat(s) is None]
        if missing:
            raise InvalidBundle(f"bundle lacks {len(missing)} blob(s) its manifest lists, e.g. {missing[0]}")
        ncommits = 0
        for r in doc["repos"]:
            ref = RepoRef(RepoType.parse(r["repo_type"]), r["repo_id"])
            repo = catalog.ensure_repo(ref, r["origin"] if r["origin"] != "proxy" else "mirror")
            for c in r["commits"]:
                entries = [Entry(x[0], x[1], x[2], x[3], x[4], bool(x[5]), x[6], x[7]) for x in c["entries"]]
                commit = Commit(c["sha"], c["parents"], c["title"], c["message"], c["author"],
                                datetime.fromisoformat(c["date"]), c["tree"])
                catalog.record_commit(repo, commit, entries, [], reason="import-bundle")
                ncommits += 1
            moves = [RefUpdate(n, sha) for n, sha in r["refs"].items()]
            if moves:
                catalog.record_commit(repo, Commit(moves[0].commit or ""), [], moves, reason="import-bundle")
            catalog.audit("import-bundle", ref, bundle=str(path), commits=len(r["commits"]))
    return BundleReport(len(doc["repos"]), ncommits, len(expected), sum(expected.values()), new)


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
