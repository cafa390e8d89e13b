"""The Reader of what this mirror holds: the catalog and the store, nothing else.

Hosted and mirrored repos are answered here; pull-through (pullthrough.py) is a layer holding
this reader, and the access policy (policy.py) a layer over either.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from typing import Any

from ..catalog import Catalog, RepoRow
from ..errors import EntryNotFound, RepoNotFound
from ..model.entries import Commit, Entry
from ..model.names import RepoRef
from ..store import BlobStore
from .base import FileHit, Snapshot, parse_card
from .stream import Body, StoredBody

REF_TTL = 1.0  # seconds a branch/tag lookup is reused; commits and their entries are immutable


class LocalReader:
    def __init__(self, catalog: Catalog, store: BlobStore, *, redirect: bool = False) -> None:
        self.catalog = catalog
        self.store = store
        self.redirect = redirect  # GETs of stored blobs answered with a presigned URL (store_redirect)
        # Hot-path caches so that a HEAD of a cached file needs no database round trip:
        # repos (created, never changed here), revision -> commit for REF_TTL (another process
        # may move a branch), and (commit, path) -> entry forever (a commit never changes).
        self._repos: dict[RepoRef, RepoRow] = {}
        self._revs: dict[tuple[int, str], tuple[str, float]] = {}
        self._entries: OrderedDict[tuple[int, str, str], Entry] = OrderedDict()
        self._rows: dict[RepoRef, tuple[RepoRow | None, float]] = {}
        self.ref_ttl = REF_TTL

    async def repo_row(self, ref: RepoRef) -> RepoRow | None:
        """The catalog's row of a repo (None if absent), reused for REF_TTL: its private and gated
        flags may be changed by another process."""
        hit = self._rows.get(ref)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        row: RepoRow | None = await self._run(self.catalog.get_repo, ref)
        if len(self._rows) > 100_000:
            self._rows.clear()
        self._rows[ref] = (row, now + REF_TTL)
        return row

    def forget(self, ref: RepoRef | None = None) -> None:
        """Drop cached lookups (after this process moved refs or removed a repo)."""
        if ref is None:
            self._repos.clear()
            self._rows.clear()
        else:
            self._repos.pop(ref, None)
            self._rows.pop(ref, None)
        self._revs.clear()
        self._entries.clear()

    def _cached_file(self, ref: RepoRef, revision: str, path: str) -> FileHit | None:
        repo = self._repos.get(ref)
        if repo is None:
            return None
        rev = self._revs.get((repo.pk, revision))
        if rev is None or rev[1] < time.monotonic():
            return None
        entry = self._entries.get((repo.pk, rev[0], path))
        if entry is None:
            return None
        return FileHit(repo, rev[0], entry)

    def _remember(self, hit: FileHit, revision: str) -> None:
        ttl = float("inf") if revision == hit.commit else self.ref_ttl
        if ttl <= 0:
            return
        self._repos[hit.repo.ref] = hit.repo
        self._revs[(hit.repo.pk, revision)] = (hit.commit, time.monotonic() + ttl)
        if len(self._revs) > 100_000:
            self._revs.clear()
        self._entries[(hit.repo.pk, hit.commit, hit.entry.path)] = hit.entry
        if len(self._entries) > 200_000:
            self._entries.popitem(last=False)

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(functools.partial(fn, *args, **kw))

    # -- synchronous core, one thread hop per request --------------------------------------

    def _repo(self, ref: RepoRef) -> RepoRow:
        row = self.catalog.get_repo(ref)
        if row is None:
            raise RepoNotFound(f"Repository not found: {ref}")
        return row

    def pick(self, candidates: list[RepoRef]) -> RepoRef:
        """First candidate reading of a path whose repo exists, else the first one."""
        for ref in candidates:
            if self.catalog.get_repo(ref) is not None:
                return ref
        return candidates[0]

    def _file(self, ref: RepoRef, revision: str, path: str) -> FileHit:
        repo = self._repo(ref)
        commit = self.catalog.resolve(repo, revision)
        return self._file_at(repo, commit, revision, path)

    def _file_at(self, repo: RepoRow, commit: str, revision: str, path: str) -> FileHit:
        entry = self.catalog.get_entry(repo, commit, path)
        if entry is None or not entry.is_file:
            raise EntryNotFound(f'{path} does not exist on "{revision}"', commit=commit)
        return FileHit(repo, commit, entry)

    def _snapshot(self, ref: RepoRef, revision: str) -> Snapshot:
        repo = self._repo(ref)
        sha = self.catalog.resolve(repo, revision)
        commit = self.catalog.get_commit(repo, sha)
        assert commit is not None
        return Snapshot(repo, commit)

    # -- async API -------------------------------------------------------------------------

    async def pick_route(self, candidates: list[RepoRef]) -> RepoRef:
        if len(candidates) == 1:
            return candidates[0]
        return await self._run(self.pick, candidates)  # type: ignore[no-any-return]

    async def file(self, ref: RepoRef, revision: str, path: str) -> FileHit:
        hit = self._cached_file(ref, revision, path)
        if hit is None:
            hit = await self._run(self._file, ref, revision, path)
            if hit.entry.sha256 is not None:
                self._remember(hit, revision)
        return hit

    async def open_blob(
        self, hit: FileHit, *, head: bool, start: int = 0, alive: Any = None
    ) -> Body:
        """Where to read the bytes of `hit` from. Hosted and mirrored files are always stored."""
        return StoredBody(self.store, hit.entry.sha256, redirect=self.redirect)

    async def extra_info(self, snap: Snapshot) -> dict[str, Any] | None:
        """Upstream repo-info fields to merge into ours (pull-through keeps the Hub's metadata)."""
        return None

    async def snapshot(self, ref: RepoRef, revision: str) -> Snapshot:
        return await self._run(self._snapshot, ref, revision)  # type: ignore[no-any-return]

    async def files(self, snap: Snapshot) -> list[Entry]:
        return await self._run(  # type: ignore[no-any-return]
            self.catalog.list_entries, snap.repo, snap.commit.sha, recursive=True, files_only=True
        )

    async def tree(
        self, snap: Snapshot, path: str, *, recursive: bool, after: str | None, limit: int
    ) -> list[Entry]:
        def run() -> list[Entry]:
            if path:
                d = self.catalog.get_entry(snap.repo, snap.commit.sha, path)
                if d is None or d.is_file:
                    raise EntryNotFound(f'{path} does not exist on "{snap.commit.sha}"', commit=snap.commit.sha)
            return self.catalog.list_entries(
                snap.repo, snap.commit.sha, under=path, recursive=recursive, after=after, limit=limit
            )

        return await self._run(run)  # type: ignore[no-any-return]

    async def paths_info(self, snap: Snapshot, paths: list[str]) -> list[Entry]:
        return await self._run(self.catalog.get_entries, snap.repo, snap.commit.sha, paths)  # type: ignore[no-any-return]

    async def commits(self, snap: Snapshot) -> list[Commit]:
        return await self._run(self.catalog.log, snap.repo, snap.commit.sha)  # type: ignore[no-any-return]

    async def commit_infos(self, repo: RepoRow, shas: list[str]) -> dict[str, Commit]:
        return await self._run(self.catalog.commit_titles, repo, shas)  # type: ignore[no-any-return]

    async def refs(self, ref: RepoRef) -> dict[str, str]:
        def run() -> dict[str, str]:
            return self.catalog.refs(self._repo(ref))

        return await self._run(run)  # type: ignore[no-any-return]

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - keyed by content hash, bounded
    def _card(self, sha256: str) -> dict[str, Any] | None:
        data = b"".join(self.store.read(sha256, 0, 1 << 20))
        return parse_card(data)

    async def card(self, snap: Snapshot) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            e = self.catalog.get_entry(snap.repo, snap.commit.sha, "README.md")
            if e is None or e.sha256 is None or self.store.stat(e.sha256) is None:
                return None
            return self._card(e.sha256)

        return await self._run(run)  # type: ignore[no-any-return]
