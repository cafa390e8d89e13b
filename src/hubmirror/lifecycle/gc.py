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
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..catalog import Catalog
from ..coord.base import Coordinator
from ..coord.local import as_coordinator
from ..errors import RepoNotFound
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from ..store import BlobStore

log = logging.getLogger("hubmirror.gc")

SWEEP_BATCH = 1000  # blobs of the store checked against the catalog at a time
T = TypeVar("T")


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
    """The (repo pk, commit) that retention drops. Reads one snapshot of the catalog, streamed:
    memory holds the kept commits, never the whole ref log or every commit at once."""
    with catalog.retention_view() as view:
        policy: dict[int, tuple[int | None, bool]] = {}  # mirror repo -> (keep_last, keep_tags)
        for pk, ref, o in view.repos():
            if o == "mirror":
                spec = mirrors.get(ref)
                policy[pk] = (spec.keep_last, spec.keep_tags) if spec else (None, True)
        keep: set[tuple[int, str]] = {(repo, c) for repo, _, c in view.refs()}
        keep.update(view.pins())
        # per mirror branch with keep_last: its newest `keep_last` distinct commits, by the order of
        # their last appearance in the ref log (what `dict.fromkeys(reversed(seq))[:keep_last]` gives)
        recent: dict[tuple[int, str], OrderedDict[str, None]] = {}
        for repo, name, new, _at in view.ref_log():
            if not new or repo not in policy:
                continue
            keep_last, keep_tags = policy[repo]
            if name.startswith("refs/tags/"):
                if keep_tags:
                    keep.add((repo, new))
                continue
            if keep_last is None:
                keep.add((repo, new))
                continue
            seen = recent.setdefault((repo, name), OrderedDict())
            seen.pop(new, None)
            seen[new] = None
            if len(seen) > keep_last:
                seen.popitem(last=False)
        for (repo, _name), seen in recent.items():
            keep.update((repo, c) for c in seen)
        drop: list[tuple[int, str]] = []
        for repo, o, c in view.commits():
            if o == "local":
                continue
            # mirror commits never named by a ref (a synced sha) stay unless retention is set
            if o == "mirror" and policy.get(repo, (None, True))[0] is None:
                continue
            if (repo, c) not in keep:
                drop.append((repo, c))
    return drop


def gc(catalog: Catalog, store: BlobStore, data: Coordinator | Path, *, mirrors: dict[RepoRef, MirrorSpec],
       dry_run: bool = False, actor: str | None = None, client: str | None = None) -> GcReport:
    """Apply retention and delete unreferenced blobs; a real run is audited with `actor` and `client`."""
    report = GcReport(dry_run)
    with _coord(data).gc_lock(exclusive=True):
        drop = commits_to_drop(catalog, mirrors)
        names = {r.pk: str(r.ref) for r in catalog.list_repos()}
        report.commits_removed = [(names.get(repo, str(repo)), c) for repo, c in drop]
        if not dry_run and drop:
            catalog.delete_commits(drop)
        # a dry run asks what would stay referenced; a real run asks after deleting. The store is
        # swept a batch at a time, each batch asked about at once: memory stays bounded
        excluding = set(drop) if dry_run else None
        for batch in _batches(store.list(), SWEEP_BATCH):
            referenced = catalog.referenced_among((info.sha256 for info in batch), excluding=excluding)
            for info in batch:
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


def purge(catalog: Catalog, store: BlobStore, data: Coordinator | Path, ref: RepoRef, *, reason: str = "",
          actor: str | None = None, client: str | None = None) -> PurgeReport:
    """Remove a repo and every blob no other repo uses. Irrecoverable; written to the audit log."""
    with _coord(data).gc_lock(exclusive=True):
        repo = catalog.get_repo(ref)
        if repo is None:
            raise RepoNotFound(f"Repository not found: {ref}")
        mine = catalog.blobs_of_repo(repo.pk)
        commits = catalog.count_commits(repo.pk)
        catalog.delete_repo(repo.pk)
        catalog.remove_mirror(ref)
        deleted, freed = 0, 0
        for sha in sorted(mine - catalog.referenced_among(mine)):
            info = store.stat(sha)
            if store.delete(sha):
                deleted += 1
                freed += info.size if info else 0
            catalog.forget_blob(sha)
        catalog.audit("purge", ref, actor=actor, client=client, commits=commits, blobs_deleted=deleted, bytes_freed=freed, reason=reason)
    return PurgeReport(str(ref), commits, deleted, freed)


def _batches(items: Iterable[T], n: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _coord(x: Coordinator | Path) -> Coordinator:
    return as_coordinator(x)  # type: ignore[return-value]
