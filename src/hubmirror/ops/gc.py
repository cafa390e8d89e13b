"""Garbage collection and purge, audited with who ran them (lifecycle/gc.py does the work)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..catalog import Catalog
from ..catalog.access import looks_like_token
from ..errors import InvalidInput
from ..lifecycle.gc import GcReport, PurgeReport, gc, purge
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from ..store import BlobStore
from .actor import Actor

MAX_REASON = 1000


def run_gc(catalog: Catalog, store: BlobStore, data: Path, actor: Actor, *,
           config_mirrors: Iterable[MirrorSpec] = (), dry_run: bool = False) -> GcReport:
    """Apply retention (keep_last/keep_tags of each mirror, the config file's declarations
    winning over the catalog's; pins; refs) and delete unreferenced blobs. A dry run removes
    nothing and is audited as `gc-dry-run`."""
    mirrors = {m.spec.ref: m.spec for m in catalog.list_mirrors()} | {m.ref: m for m in config_mirrors}
    report = gc(catalog, store, data, mirrors=mirrors, dry_run=dry_run, actor=actor.name, client=actor.client)
    if dry_run:
        catalog.audit("gc-dry-run", None, actor=actor.name, client=actor.client,
                      commits_removed=len(report.commits_removed), blobs_deleted=report.blobs_deleted,
                      bytes_freed=report.bytes_freed)
    return report


def run_purge(catalog: Catalog, store: BlobStore, data: Path, actor: Actor, ref: RepoRef, *,
              reason: str = "") -> PurgeReport:
    """Remove a repo and the blobs no other repo uses, irrecoverably. RepoNotFound if absent."""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidInput(f"invalid reason: a string of at most {MAX_REASON} characters")
    if looks_like_token(reason):
        raise InvalidInput("invalid reason: it looks like it holds a token (the reason is audited)")
    return purge(catalog, store, data, ref, reason=reason, actor=actor.name, client=actor.client)
