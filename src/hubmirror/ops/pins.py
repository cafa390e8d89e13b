"""Pins: commits that are never evicted or garbage-collected.

Pinning records the pin and says which of the commit's files the store lacks; fetching them is
the caller's job (the CLI completes them before it returns, the admin API in the background),
because it needs an upstream client this layer does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog
from ..catalog.access import looks_like_token
from ..errors import InvalidInput, NotFound
from ..model.names import RepoRef, validate_revision
from ..store import BlobStore
from .actor import Actor
from .timefmt import iso

MAX_NOTE = 1000


@dataclass(frozen=True, slots=True)
class PinResult:
    ref: RepoRef
    revision: str  # what was asked
    commit: str  # what it resolved to
    created: bool  # False: the commit was pinned already (its note and revision were updated)
    missing: list[str] = field(default_factory=list)  # paths of files whose blobs the store lacks

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.ref.repo_id, "repo_type": self.ref.repo_type.value, "revision": self.revision,
                "commit": self.commit, "created": self.created, "missing_files": len(self.missing)}


def _note(note: str) -> str:
    if not isinstance(note, str):
        raise InvalidInput("invalid note: not a string")
    if len(note) > MAX_NOTE:
        raise InvalidInput(f"invalid note: at most {MAX_NOTE} characters")
    if looks_like_token(note):
        raise InvalidInput("invalid note: it looks like it holds a token (notes are listed and audited)")
    return note


def missing_files(catalog: Catalog, store: BlobStore, ref: RepoRef, commit: str) -> list[str]:
    """Paths of the files of a recorded commit whose blobs the store lacks."""
    repo = catalog.get_repo(ref)
    if repo is None:
        raise NotFound(f"{ref} is not in this mirror: sync it or download it through the mirror first")
    out = []
    for f in catalog.list_entries(repo, commit, recursive=True, files_only=True):
        sha = f.sha256 or catalog.sha256_for_oid(f.oid)
        if not sha or store.stat(sha) is None:
            out.append(f.path)
    return out


def pin(catalog: Catalog, actor: Actor, ref: RepoRef, revision: str = "main", note: str = "", *,
        store: BlobStore) -> PinResult:
    """Pin the commit `revision` resolves to now. NotFound if the repo is not in this mirror,
    RevisionNotFound if the revision is not; the answer lists the files still to fetch."""
    validate_revision(revision)
    note = _note(note)
    repo = catalog.get_repo(ref)
    if repo is None:
        raise NotFound(f"{ref} is not in this mirror: sync it or download it through the mirror first")
    commit = catalog.resolve(repo, revision)
    created = catalog.pin(repo.pk, commit, revision, note)
    missing = missing_files(catalog, store, ref, commit)
    catalog.audit("pin", ref, actor=actor.name, client=actor.client, commit=commit, revision=revision, note=note,
                  missing_files=len(missing))
    return PinResult(ref, revision, commit, created, missing)


def unpin(catalog: Catalog, actor: Actor, ref: RepoRef, revision: str) -> str:
    """Remove the pin of `revision` (the revision it was pinned by, or its commit); the commit
    stays until retention or gc removes it. Returns the commit; NotFound if it is not pinned."""
    validate_revision(revision)
    repo = catalog.get_repo(ref)
    if repo is None:
        raise NotFound(f"Repository not found: {ref}")
    pinned = [p for p in catalog.pins() if p["repo_id"] == ref.repo_id and p["repo_type"] == ref.repo_type.value
              and (p["revision"] == revision or p["commit"] == revision)]
    commit = str(pinned[0]["commit"]) if pinned else catalog.resolve(repo, revision)
    if not catalog.unpin(repo.pk, commit):
        raise NotFound(f"{ref}@{revision} ({commit}) is not pinned")
    catalog.audit("unpin", ref, actor=actor.name, client=actor.client, commit=commit, revision=revision)
    return commit


def list_pins(catalog: Catalog) -> list[dict[str, Any]]:
    """Every pin, as the catalog keeps it: repo_type, repo_id, commit, revision, note, created_at."""
    return catalog.pins()


def pin_json(row: dict[str, Any]) -> dict[str, Any]:
    """A pin as the admin API answers it (times in ISO 8601)."""
    return {"repo_type": row["repo_type"], "repo_id": row["repo_id"], "commit": row["commit"],
            "revision": row["revision"], "note": row["note"], "created_at": iso(row["created_at"])}
