"""`check-update`: is the upstream ahead of what this mirror serves? Without downloading any file.

It follows the rules of every other read:

* only repos this mirror follows from the upstream are answered: declared mirrors, synced repos,
  and pulled-through repos the proxy rules still allow. Anything else (hosted repos, repos never
  seen, denied ones) is `RepoNotFound` and costs the upstream nothing;
* a repo the upstream reports as private or gated is answered only if the mirror may serve it
  (`allow_gated` on the mirror, or `proxy.allow_gated`), exactly as it would be served;
* offline (or with the proxy disabled for a pulled-through repo, or with the circuit breaker
  open), the upstream is not asked: the last known upstream commit is answered, marked stale;
* the upstream's answer is cached like other branch metadata (`proxy.branch_ttl`), one request in
  flight per repo and revision, and a commit's file listing is cached forever.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..catalog import Catalog
from ..coord import SingleFlight
from ..errors import (
    GatedRepo,
    HubMirrorError,
    RepoNotFound,
    RevisionNotFound,
    UpstreamError,
)
from ..hub import HubClient
from ..model.names import RepoRef, is_commit_sha
from .engine import matches

MAX_LISTINGS = 1000  # upstream listings kept for check-update (oldest dropped first)


@dataclass(frozen=True, slots=True)
class _Upstream:
    commit: str
    last_modified: str | None
    at: float


class UpdateChecker:
    def __init__(
        self,
        catalog: Catalog,
        client: HubClient,
        *,
        allows: Any,  # RepoRef -> bool: the proxy rules (None: pull-through is disabled)
        offline: bool,
        allow_gated: bool,
        ttl: float,
        negative_ttl: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.client = client
        self.allows = allows
        self.offline = offline
        self.allow_gated = allow_gated
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[tuple[RepoRef, str], _Upstream] = {}
        self._negative: dict[tuple[RepoRef, str], tuple[HubMirrorError, float]] = {}
        self._inflight: SingleFlight[tuple[RepoRef, str], _Upstream] = SingleFlight()
        self._listings: SingleFlight[str, dict[str, str]] = SingleFlight()

    def _serves(self, ref: RepoRef) -> tuple[Any, Any, bool]:
        """(repo row, mirror row, may ask the upstream), or RepoNotFound for repos not followed."""
        repo = self.catalog.get_repo(ref)
        mirror = self.catalog.get_mirror(ref)
        if mirror is not None:
            return repo, mirror, not self.offline
        if repo is not None and repo.origin == "mirror":
            return repo, None, not self.offline
        if repo is not None and repo.origin == "proxy":
            if self.allows is None:  # pull-through is disabled: served as cached, never asked about
                return repo, None, False
            if self.allows(ref):
                return repo, None, not self.offline
        raise RepoNotFound(f"Repository not found: {ref} is not mirrored from an upstream here")

    async def check(self, ref: RepoRef, revision: str) -> tuple[dict[str, Any], str | None]:
        """The answer, and why it may be stale (None if the upstream was asked within the TTL)."""
        repo, mirror, may_ask = await asyncio.to_thread(self._serves, ref)
        spec_ok = mirror.spec.allow_gated if mirror is not None else self.allow_gated
        mirrored: str | None = None
        if repo is not None:
            try:
                mirrored = await asyncio.to_thread(self.catalog.resolve, repo, revision)
            except RevisionNotFound:
                mirrored = None
        stale: str | None = None
        up: _Upstream | None = None
        if is_commit_sha(revision):
            # a commit never moves: nothing to ask the upstream (and no listing to fetch for it)
            if mirrored is None:
                raise RevisionNotFound(f"Invalid rev id: {revision} is not mirrored here for {ref}")
            may_ask = False
            up = _Upstream(mirrored, None, 0.0)
        if may_ask:
            try:
                up = await self._upstream(ref, revision, spec_ok)
            except (RepoNotFound, RevisionNotFound, GatedRepo):
                raise
            except UpstreamError as e:
                stale = f"upstream unreachable ({e.message[:200]})"
        elif up is None:
            stale = "offline mode" if self.offline else "pull-through is disabled"
        if up is None:  # the last known upstream commit
            known = (mirror.upstream or {}).get(revision) if mirror is not None else None
            up = _Upstream(known or mirrored or "", None, 0.0) if (known or mirrored) else None
            if up is None:
                raise RevisionNotFound(f"Invalid rev id: {revision} is not known here for {ref} and the upstream "
                                       f"cannot be asked ({stale})")
        files_changed = 0
        if up.commit != mirrored and up.commit and not stale:
            spec = mirror.spec if mirror is not None else None
            theirs = await self._listing(ref, repo, up.commit)
            ours: dict[str, str] = {}
            if repo is not None and mirrored:
                ours = {e.path: e.oid for e in await asyncio.to_thread(
                    self.catalog.list_entries, repo, mirrored, recursive=True, files_only=True)}
            if spec is not None:
                theirs = {p: o for p, o in theirs.items() if matches(p, spec.include, spec.exclude)}
                ours = {p: o for p, o in ours.items() if matches(p, spec.include, spec.exclude)}
            files_changed = sum(1 for p in theirs.keys() | ours.keys() if theirs.get(p) != ours.get(p))
        return {
            "repo_id": ref.repo_id,
            "repo_type": ref.repo_type.value,
            "revision": revision,
            "update_available": bool(up.commit) and up.commit != mirrored,
            "mirrored_commit": mirrored,
            "upstream_commit": up.commit or None,
            "upstream_last_modified": up.last_modified,
            "files_changed": files_changed,
            "stale": stale,
        }, stale

    async def _upstream(self, ref: RepoRef, revision: str, allow_gated: bool) -> _Upstream:
        key = (ref, revision)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < self.ttl:
            return hit
        neg = self._negative.get(key)
        if neg is not None and neg[1] > time.monotonic():
            raise copy.copy(neg[0])
        return await self._inflight.run(key, lambda: self._ask(ref, revision, key, allow_gated))

    async def _ask(self, ref: RepoRef, revision: str, key: tuple[RepoRef, str], allow_gated: bool) -> _Upstream:
        try:
            info = await self.client.repo_info(ref, revision)
            if (info.get("private") or info.get("gated")) and not allow_gated:
                # this mirror does not serve it: say no more than for a repo it does not have
                raise RepoNotFound(f"Repository not found: {ref} is private or gated upstream and not served here")
        except (RepoNotFound, RevisionNotFound, GatedRepo) as e:  # remembered like pull-through's
            if len(self._negative) > 10_000:
                self._negative.clear()
            self._negative[key] = (e, time.monotonic() + self.negative_ttl)
            raise
        lm = info.get("lastModified")
        up = _Upstream(str(info["sha"]), lm if isinstance(lm, str) and len(lm) < 64 else None, time.monotonic())
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = up
        return up

    async def _listing(self, ref: RepoRef, repo: Any, commit: str) -> dict[str, str]:
        """path -> oid of a commit's files: from the catalog if recorded, else the upstream (cached
        forever, one request in flight)."""
        if repo is not None and await asyncio.to_thread(self.catalog.get_commit, repo, commit) is not None:
            return {e.path: e.oid for e in await asyncio.to_thread(
                self.catalog.list_entries, repo, commit, recursive=True, files_only=True)}
        key = f"tree:{ref}@{commit}"
        return await self._listings.run(key, lambda: self._fetch_listing(ref, commit, key))

    async def _fetch_listing(self, ref: RepoRef, commit: str, key: str) -> dict[str, str]:
        cached = await asyncio.to_thread(self.catalog.api_cache_get, key)
        if cached is not None:
            return dict(orjson.loads(cached[0]))
        listing = {e.path: e.oid for e in await self.client.tree(ref, commit) if e.is_file}
        try:
            await asyncio.to_thread(self.catalog.api_cache_put, key, orjson.dumps(listing), None)
            await asyncio.to_thread(self.catalog.api_cache_prune, "tree:", MAX_LISTINGS)
        except HubMirrorError:
            pass  # a full disk: answered anyway, cached next time
        return listing
