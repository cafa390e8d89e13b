"""Retention and mark-and-sweep garbage collection, and purge.

Kept (marked) commits:
  * every commit of a hosted (imported) repo;
  * the commit every ref points at now, and every pinned commit;
  * for a declared mirror: the last `keep_last` commits each branch pointed at (all if unset) and,
    with `keep_tags`, every commit a tag ever pointed at;
  * for a pulled-through repo: only the above refs and pins (the rest is cache).
Then every blob no kept commit references is deleted.

Both run under the exclusive GcLock, while syncs, imports and fills hold it shared from the
moment they publish a blob until the catalog references it: a blob is never swept in between.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import Catalog
from ..errors import RepoNotFound
from ..locks import GcLock
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from ..store import BlobStore

log = logging.getLogger("hubmirror.gc")


@dataclass
class GcReport:
    dry_run: bool
    commits_removed: list[tuple[str, str]] = field(default_factory=list)  # (repo, commit)
    blobs_deleted: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "commits_removed": [{"repo": r, "commit": c} for r, c in self.commits_removed],
                "blobs_deleted": self.blobs_deleted, "bytes_freed": self.bytes_freed}


def commits_to_drop(catalog: Catalog, mirrors: dict[RepoRef, MirrorSpec]) -> list[tuple[int, str]]:
    commits = catalog.all_commits()
    origin = {repo: o for repo, o, _ in commits}
    keep: set[tuple[int, str]] = {(repo, c) for repo, _, c in catalog.all_refs()} | catalog.pinned_commits()
    keep |= {(repo, c) for repo, o, c in commits if o == "local"}
    pk_to_ref: dict[int, RepoRef] = {}
    for r in catalog.list_repos():
        pk_to_ref[r.pk] = r.ref
    history: dict[tuple[int, str], list[str]] = defaultdict(list)
    for repo, name, new, _at in catalog.ref_log_all():
        if new:
            history[(repo, name)].append(new)
    for (repo, name), seq in history.items():
        if origin.get(repo) != "mirror":
            continue
        spec = mirrors.get(pk_to_ref.get(repo))  # type: ignore[arg-type]
        keep_last = spec.keep_last if spec else None
        keep_tags = spec.keep_tags if spec else True
        if name.startswith("refs/tags/"):
            if keep_tags:
                keep |= {(repo, c) for c in seq}
            continue
        newest_first = list(dict.fromkeys(reversed(seq)))
        kept = newest_first if keep_last is None else newest_first[:keep_last]
        keep |= {(repo, c) for c in kept}
    for repo, o, c in commits:  # mirror commits never named by a ref (a synced sha) stay unless retention is set
        if o == "mirror":
            spec = mirrors.get(pk_to_ref.get(repo))  # type: ignore[arg-type]
            if spec is None or spec.keep_last is None:
                keep.add((repo, c))
    return [(repo, c) for repo, _, c in commits if (repo, c) not in keep]


def gc(catalog: Catalog, store: BlobStore, data: Path, *, mirrors: dict[RepoRef, MirrorSpec],
       dry_run: bool = False, actor: str | None = None, client: str | None = None) -> GcReport:
    """Apply retention and delete unreferenced blobs; a real run is audited with `actor` and `client`."""
    report = GcReport(dry_run)
    with GcLock(data, exclusive=True):
        drop = commits_to_drop(catalog, mirrors)
        names = {r.pk: str(r.ref) for r in catalog.list_repos()}
        report.commits_removed = [(names.get(repo, str(repo)), c) for repo, c in drop]
        if not dry_run and drop:
            catalog.delete_commits(drop)
        # a dry run asks what would stay referenced; a real run asks after deleting
        referenced = catalog.referenced_blobs(excluding=set(drop) if dry_run else None)
        for info in store.list():
            if info.sha256 in referenced:
                continue
            report.blobs_deleted += 1
            report.bytes_freed += info.size
            if not dry_run:
                store.delete(info.sha256)
                catalog.forget_blob(info.sha256)
    if not dry_run:
        catalog.audit("gc", None, actor=actor, client=client, commits_removed=len(drop), blobs_deleted=report.blobs_deleted,
                      bytes_freed=report.bytes_freed)
    return report


@dataclass
class PurgeReport:
    repo: str
    commits: int
    blobs_deleted: int
    bytes_freed: int


def purge(catalog: Catalog, store: BlobStore, data: Path, ref: RepoRef, *, reason: str = "",
          actor: str | None = None, client: str | None = None) -> PurgeReport:
    """Remove a repo and every blob no other repo uses. Irrecoverable; written to the audit log."""
    with GcLock(data, exclusive=True):
        repo = catalog.get_repo(ref)
        if repo is None:
            raise RepoNotFound(f"Repository not found: {ref}")
        mine = catalog.blobs_of_repo(repo.pk)
        commits = sum(1 for r, _o, _c in catalog.all_commits() if r == repo.pk)
        catalog.delete_repo(repo.pk)
        catalog.remove_mirror(ref)
        others = catalog.referenced_blobs()
        deleted, freed = 0, 0
        for sha in mine - others:
            info = store.stat(sha)
            if store.delete(sha):
                deleted += 1
                freed += info.size if info else 0
            catalog.forget_blob(sha)
        catalog.audit("purge", ref, actor=actor, client=client, commits=commits, blobs_deleted=deleted, bytes_freed=freed, reason=reason)
    return PurgeReport(str(ref), commits, deleted, freed)
