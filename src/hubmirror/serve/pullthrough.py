"""PullThrough: a layer over the local reader that falls through to the upstream for repos that
are neither hosted here nor declared mirrors (and that the rules allow). It holds the reader it
wraps; everything it does not answer itself goes to that reader.

* A revision is resolved upstream (one repo-info call) and the commit's listing recorded in the
  catalog, so every API answer is then served like a mirrored repo's. Anything addressed by a
  commit sha is cached forever; a branch's commit for `branch_ttl`.
* RepoNotFound and RevisionNotFound are remembered for `negative_ttl`; 401/403/429/5xx are not.
* When the upstream is unreachable, times out, or answers 5xx/429 (or `offline` is set), what is
  cached is still served: a branch from its last known commit, marked stale.
* Private and gated upstream repos are not pulled through unless `allow_gated` is set, because
  the mirror would otherwise hand them to anyone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson

from ..catalog import Catalog, RefUpdate, RepoRow
from ..catalog.schema import utcnow
from ..coord import SingleFlight
from ..errors import (
    GatedRepo,
    HubMirrorError,
    RepoNotFound,
    ResumeRefused,
    RevisionNotFound,
    UpstreamError,
    UpstreamUnavailable,
)
from ..hub import HubClient
from ..model.access import upstream_gated
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, is_commit_sha
from ..proxy.fill import TAINTED, WAIT, Filler, FillReader
from ..proxy.journal import Taint
from ..proxy.rules import Rules
from .base import FileHit, Snapshot
from .local import LocalReader
from .stream import Body, FillBody, StoredBody

log = logging.getLogger("hubmirror.proxy")

# repo-info fields of the upstream that we pass on (ours win for id, sha, siblings, dates)
INFO_FIELDS = {
    "pipeline_tag", "library_name", "tags", "cardData", "config", "transformersInfo", "safetensors", "gguf",
    "model-index", "widgetData", "mask_token", "baseModels", "sdk", "runtime", "description", "citation",
    "paperswithcode_id", "author", "downloads", "likes", "gated", "private", "disabled",
}


class Unavailable(UpstreamUnavailable):
    """A miss that cannot be filled: the upstream is unreachable and nothing is cached."""


class PullThrough:
    def __init__(
        self,
        local: LocalReader,
        client: HubClient,
        filler: Filler,
        *,
        rules: Rules,
        cache_rules: Rules,
        offline: bool,
        branch_ttl: float,
        negative_ttl: float,
        allow_gated: bool,
    ) -> None:
        self.local = local
        self.catalog: Catalog = local.catalog
        self.store = local.store
        self._run = local._run
        self.client = client
        self.filler = filler
        self.rules = rules
        self.cache_rules = cache_rules
        self.offline = offline
        self.branch_ttl = branch_ttl
        self.negative_ttl = negative_ttl
        self.allow_gated = allow_gated
        local.ref_ttl = min(local.ref_ttl, branch_ttl)
        self._checked: dict[tuple[int, str], float] = {}
        self._negative: dict[tuple[RepoRef, str], tuple[HubMirrorError, float]] = {}
        self._inflight: SingleFlight[tuple[RepoRef, str], tuple[RepoRow, str, str | None]] = SingleFlight()
        self._access: dict[str, tuple[int, bool, datetime]] = {}

    # -- revision resolution ----------------------------------------------------------------

    async def _ensure(self, ref: RepoRef, revision: str) -> tuple[RepoRow, str, str | None]:
        """(repo, commit, stale reason) for a revision, asking the upstream when needed. Single flight."""
        return await self._inflight.run((ref, revision), lambda: self._ensure_once(ref, revision))

    async def _ensure_once(self, ref: RepoRef, revision: str) -> tuple[RepoRow, str, str | None]:
        repo = await self._run(self.catalog.get_repo, ref)
        if repo is not None and repo.origin != "proxy":
            return repo, await self._run(self.catalog.resolve, repo, revision), None
        if not self.rules.allows(ref):
            raise RepoNotFound(f"Repository not found: {ref} is not hosted or mirrored here, and pull-through "
                               f"of it is not allowed by this mirror's rules")
        neg = self._negative.get((ref, revision))
        if neg is not None and neg[1] > time.monotonic():
            raise neg[0]
        if repo is not None:
            if is_commit_sha(revision) and await self._run(self.catalog.get_commit, repo, revision):
                return repo, revision, None
            checked = self._checked.get((repo.pk, revision))
            if checked is not None and checked > time.monotonic():
                return repo, await self._run(self.catalog.resolve, repo, revision), None
        if self.offline:
            return await self._stale(ref, repo, revision, None)
        try:
            info = await self.client.repo_info(ref, revision)
        except (RepoNotFound, RevisionNotFound) as e:
            err: HubMirrorError = type(e)(_client_message(e, ref, revision))
            self._remember_negative(ref, revision, err)
            raise err from None
        except GatedRepo as e:
            raise GatedRepo(f"{ref} is gated upstream: {e.message}") from None
        except UpstreamError as e:  # unreachable, 5xx, 429 after retries, garbage
            return await self._stale(ref, repo, revision, e)
        if (info.get("private") or info.get("gated")) and not self.allow_gated:
            err = GatedRepo(f"{ref} is private or gated upstream; this mirror does not pull such repos through")
            self._remember_negative(ref, revision, err)
            raise err
        sha = str(info["sha"])
        refname = None if is_commit_sha(revision) else (revision if revision.startswith("refs/") else f"refs/heads/{revision}")
        if repo is None or await self._run(self.catalog.get_commit, repo, sha) is None:
            try:  # listed before anything is recorded: a refused listing leaves no trace
                listing = await self.client.tree(ref, sha)
            except UpstreamError as e:
                return await self._stale(ref, repo, revision, e)
            repo = await self._run(self.catalog.ensure_repo, ref, "proxy")
            if repo.origin != "proxy":  # became hosted or mirrored meanwhile
                return repo, await self._run(self.catalog.resolve, repo, revision), None
            repo = await self._run(functools.partial(self.catalog.set_visibility, repo,
                                                     private=bool(info.get("private")), gated=upstream_gated(info.get("gated"))))
            await self._run(self._record, repo, sha, info, listing, refname)
        elif refname is not None:
            current = (await self._run(self.catalog.refs, repo)).get(refname)
            if current != sha:
                await self._run(self.catalog.set_ref, repo, refname, sha, "pull-through")
        ttl = float("inf") if is_commit_sha(revision) else self.branch_ttl
        if len(self._checked) > 100_000:
            self._checked.clear()
        self._checked[(repo.pk, revision)] = time.monotonic() + ttl
        return repo, sha, None

    def _remember_negative(self, ref: RepoRef, revision: str, err: HubMirrorError) -> None:
        if len(self._negative) > 100_000:  # bounded: a scan of random names must not grow memory
            now = time.monotonic()
            self._negative = {k: v for k, v in self._negative.items() if v[1] > now}
            if len(self._negative) > 100_000:
                self._negative.clear()
        self._negative[(ref, revision)] = (err, time.monotonic() + self.negative_ttl)

    def _record(self, repo: RepoRow, sha: str, info: dict[str, Any], listing: list[Entry], refname: str | None) -> None:
        entries = []
        known = self.catalog.sha256_for_oids(e.oid for e in listing if e.is_file and not e.lfs)
        for e in listing:
            sha256 = e.sha256
            if e.is_file and not e.lfs:
                sha256 = known.get(e.oid)
            entries.append(Entry(e.path, e.type, e.oid, e.size, sha256, e.lfs, e.pointer_size, sha))
        date = _parse(info.get("lastModified"))
        commit = Commit(sha, [], "", "", "", date)
        moves = [RefUpdate(refname, sha)] if refname else []
        self.catalog.record_commit(repo, commit, entries, moves, reason="pull-through")
        self.catalog.save_upstream_info(repo.pk, sha, {k: v for k, v in info.items() if k in INFO_FIELDS})

    async def _stale(
        self, ref: RepoRef, repo: RepoRow | None, revision: str, err: UpstreamError | None
    ) -> tuple[RepoRow, str, str | None]:
        """The last known commit of `revision`, when the upstream cannot be asked (`err` None:
        offline) or its answer was refused."""
        why = "offline mode" if err is None else err.message
        if repo is None:
            if err is not None and not isinstance(err, UpstreamUnavailable):
                raise UpstreamError(f"{ref}@{revision}: the upstream's answer was refused ({why})") from None
            raise RepoNotFound(f"Repository not found: {ref} is not cached here and the upstream cannot be "
                               f"reached ({why})")
        try:
            sha = await self._run(self.catalog.resolve, repo, revision)
        except RevisionNotFound:
            if err is not None and not isinstance(err, UpstreamUnavailable):
                raise UpstreamError(f"{ref}@{revision}: the upstream's answer was refused ({why})") from None
            raise RevisionNotFound(f"Invalid rev id: {revision} is not cached here for {ref} and the upstream "
                                   f"cannot be reached ({why})") from None
        stale = None if is_commit_sha(revision) else f"upstream unreachable ({why[:200]}); last known commit"
        return repo, sha, stale

    # -- Reader API -------------------------------------------------------------------------

    async def file(self, ref: RepoRef, revision: str, path: str) -> FileHit:
        cached = self.local._cached_file(ref, revision, path)
        if cached is not None:
            return cached
        repo, commit, stale = await self._ensure(ref, revision)
        hit: FileHit = await self._run(self.local._file_at, repo, commit, revision, path)
        if stale:
            return FileHit(hit.repo, hit.commit, hit.entry, stale)
        if hit.entry.sha256 is not None:
            self.local._remember(hit, revision)  # for 1 s, well inside branch_ttl
        return hit

    async def snapshot(self, ref: RepoRef, revision: str) -> Snapshot:
        repo, sha, stale = await self._ensure(ref, revision)
        commit = await self._run(self.catalog.get_commit, repo, sha)
        assert commit is not None
        return Snapshot(repo, commit, stale)

    async def open_blob(
        self, hit: FileHit, *, head: bool, start: int = 0, alive: Callable[[], bool] | None = None
    ) -> Body:
        """Where to read `hit`'s bytes from. `start`: the first byte the client asked for (a Range;
        past 0 it may be resuming); `alive`: is the client still there (while it waits)."""
        e = hit.entry
        if head or hit.repo.origin != "proxy":
            return StoredBody(self.store, e.sha256, redirect=self.local.redirect)  # hosted and mirrored blobs are always stored; a HEAD sends no bytes
        keep = self.cache_rules.allows(hit.repo.ref)
        trigger = "range" if start > 0 else "full"
        if start > 0:  # a resume: fills of other processes may have sent the bytes it holds
            await self.filler.refresh_taints(e)
        tries = 0
        while tries < 4:
            dying = self.filler.failing(e)
            if dying is not None:  # it is recording what it sent: decide once it has
                await asyncio.wait_for(dying.done.wait(), 120)
            info = await self._run(self.store.stat, e.sha256) if e.sha256 is not None else None
            if info is not None and info.size != e.size:
                raise UpstreamError(f"{hit.repo.ref}/{e.path}: the upstream lists {e.size} bytes for content "
                                    f"this mirror holds with {info.size} bytes; not served")
            # no await from here to joining a fill: a fill that fails registers its taint in the
            # same step as it leaves the fills in flight, so this sees one or the other
            taints = self.filler.taints(e, start)
            if taints:
                return await self._resume(hit, taints, start, stored=info is not None, keep=keep, alive=alive)
            if info is not None:
                self._access[e.sha256 or ""] = (e.size, True, utcnow())
                return StoredBody(self.store, e.sha256, redirect=self.local.redirect)
            handle = self.filler.join_active(e)
            if handle is not None:
                return FillBody(handle, f"{hit.repo.ref}/{e.path}")
            if self.offline:
                raise Unavailable(f"{hit.repo.ref}/{e.path} is not cached here and the mirror is offline")
            joined = await self.filler.join(hit.repo.ref, hit.commit, e, keep=keep, trigger=trigger, start=start)
            if joined is WAIT:  # another replica fetches it: wait for its verdict, then decide again
                await self.filler.wait_remote(e, alive)
                e = await self._learnt(e)
                if start > 0:
                    await self.filler.refresh_taints(e)
                continue
            tries += 1
            if joined is TAINTED:
                continue  # a fill of it failed meanwhile: decide again
            if joined is None:  # a fill published it a moment ago
                e = await self._learnt(e)
                continue
            assert isinstance(joined, FillReader)
            return FillBody(joined, f"{hit.repo.ref}/{e.path}")
        raise UpstreamUnavailable(f"{hit.repo.ref}/{e.path}: its fills keep failing; try again later")

    async def _learnt(self, e: Entry) -> Entry:
        """A regular file's entry with the sha256 another fill recorded for it (if one did)."""
        if e.sha256 is not None or e.lfs:
            return e
        sha = await self._run(self.filler.published, e)
        return dataclasses.replace(e, sha256=sha) if sha is not None else e

    async def _resume(self, hit: FileHit, taints: list[Taint], start: int, *, stored: bool, keep: bool,
                      alive: Callable[[], bool] | None) -> Body:
        """A failed fill sent bytes of this blob that nobody verified: a resume onto them is answered
        only from a verified copy that proves them right (fetched first if needed; nothing is sent
        meanwhile), else refused."""
        e = hit.entry
        refused = ResumeRefused(
            f"cannot resume {hit.repo.ref}/{e.path}: an earlier transfer of it sent bytes that were never "
            f"verified and do not match the verified file; download it again from the first byte "
            f"(curl: without -C)")
        # nothing was compared (yet): a verdict needs a verified copy this mirror does not have now
        undecided = UpstreamUnavailable(
            f"cannot resume {hit.repo.ref}/{e.path} yet: an earlier transfer of it sent bytes that are still "
            f"being checked against a verified copy; retry in a moment")
        if stored and e.sha256 is not None:
            if await self.filler.prove_stored(e, e.sha256, taints, start):
                self.filler.stats.resumes_proven += 1
                return StoredBody(self.store, e.sha256, redirect=self.local.redirect)
            self.filler.stats.resumes_refused += 1
            raise refused
        if self.offline:
            self.filler.stats.resumes_refused += 1
            raise ResumeRefused(
                f"cannot resume {hit.repo.ref}/{e.path}: an earlier transfer of it sent bytes that were never "
                f"verified, and this mirror is offline with no verified copy to check them against; download "
                f"it again from the first byte (curl: without -C)")
        joined: object = None
        for _ in range(3):
            joined = self.filler.join_active(e) or await self.filler.join(
                hit.repo.ref, hit.commit, e, keep=keep, trigger="range")
            if joined is WAIT:  # another replica fetches it: wait for its verdict
                await self.filler.wait_remote(e, alive)
            elif joined is TAINTED:  # a fill of it is failing right now: wait until it has recorded why
                dying = self.filler.failing(e)
                if dying is not None:
                    await asyncio.wait_for(dying.done.wait(), 120)
            if joined is not WAIT and joined is not TAINTED and joined is not None:
                break
            e = await self._learnt(e)  # stored meanwhile (by a fill here or elsewhere)? prove against it
            if e.sha256 is not None and await self._run(self.store.stat, e.sha256) is not None:
                if await self.filler.prove_stored(e, e.sha256, taints, start):
                    self.filler.stats.resumes_proven += 1
                    return StoredBody(self.store, e.sha256, redirect=self.local.redirect)
                self.filler.stats.resumes_refused += 1
                raise refused
        if not isinstance(joined, FillReader):
            raise undecided  # no verified copy came of it: the client retries
        fill = joined.fill
        try:
            while not fill.done.is_set():
                await fill.wait_change(1.0)
                if alive is not None and not alive():
                    raise ConnectionResetError("the client went away")
            # the fill compared its verified bytes with every failed fill of this blob when it verified
            left = self.filler.taints(e, start)
            if fill.error is not None or not fill.verified or fill.sha256 is None or joined.fd is None:
                joined.release()
                raise undecided  # that download failed too: nothing to compare with yet
            if not left or await self.filler.prove_spool(e, fill.sha256, left, start, joined.fd):
                self.filler.stats.resumes_proven += 1
                return FillBody(joined, f"{hit.repo.ref}/{e.path}")  # streamed from the verified spool
        except BaseException:
            joined.release()
            raise
        joined.release()
        self.filler.stats.resumes_refused += 1
        raise refused

    async def refs(self, ref: RepoRef) -> dict[str, str]:
        repo = await self._run(self.catalog.get_repo, ref)
        if repo is not None and repo.origin != "proxy":
            return await self.local.refs(ref)
        if not self.rules.allows(ref):
            raise RepoNotFound(f"Repository not found: {ref} is not allowed for pull-through here")

        async def fetch() -> bytes:
            return orjson.dumps(await self.client.refs(ref))

        body = await self._cached_api(f"refs:{ref}", self.branch_ttl, fetch, ref)
        return dict(orjson.loads(body))

    async def commits(self, snap: Snapshot) -> list[Commit]:
        if snap.repo.origin != "proxy":
            return await self.local.commits(snap)

        async def fetch() -> bytes:
            cs = await self.client.commits(snap.repo.ref, snap.commit.sha)
            return orjson.dumps([{"id": c.sha, "parents": c.parents, "title": c.title, "message": c.message,
                                  "author": c.author, "date": c.date.isoformat()} for c in cs])

        body = await self._cached_api(f"commits:{snap.repo.ref}@{snap.commit.sha}", float("inf"), fetch, snap.repo.ref)
        return [Commit(d["id"], d["parents"], d["title"], d["message"], d["author"], _parse(d["date"]))
                for d in orjson.loads(body)]

    async def extra_info(self, snap: Snapshot) -> dict[str, Any] | None:
        if snap.repo.origin != "proxy":
            return None
        return await self._run(self.catalog.upstream_info_for, snap.repo.pk, snap.commit.sha)  # type: ignore[no-any-return]

    async def _cached_api(self, key: str, ttl: float, fetch: Any, ref: RepoRef) -> bytes:
        cached = await self._run(self.catalog.api_cache_get, key)
        if cached is not None and (ttl == float("inf") or (utcnow() - cached[2]).total_seconds() < ttl):
            return cached[0]
        if self.offline:
            if cached is not None:
                return cached[0]
            raise RepoNotFound(f"Repository not found: {ref} is not cached here and the mirror is offline")
        try:
            body: bytes = await fetch()
        except (RepoNotFound, RevisionNotFound) as e:
            raise type(e)(_client_message(e, ref, "")) from None
        except UpstreamError as e:
            if cached is not None:
                return cached[0]
            raise RepoNotFound(f"Repository not found: {ref} is not cached here and the upstream cannot be "
                               f"reached ({e.message})") from None
        await self._run(self.catalog.api_cache_put, key, body, None)
        return body

    # -- answered by the local reader (the listing was recorded when the revision was resolved) --

    async def pick_route(self, candidates: list[RepoRef]) -> RepoRef:
        return await self.local.pick_route(candidates)

    async def files(self, snap: Snapshot) -> list[Entry]:
        return await self.local.files(snap)

    async def tree(self, snap: Snapshot, path: str, *, recursive: bool, after: str | None, limit: int) -> list[Entry]:
        return await self.local.tree(snap, path, recursive=recursive, after=after, limit=limit)

    async def paths_info(self, snap: Snapshot, paths: list[str]) -> list[Entry]:
        return await self.local.paths_info(snap, paths)

    async def commit_infos(self, repo: RepoRow, shas: list[str]) -> dict[str, Commit]:
        return await self.local.commit_infos(repo, shas)

    async def card(self, snap: Snapshot) -> dict[str, Any] | None:
        return await self.local.card(snap)

    def forget(self, ref: RepoRef | None = None) -> None:
        self.local.forget(ref)

    # -- LRU bookkeeping --------------------------------------------------------------------

    def note_filled(self, sha256: str, size: int) -> None:
        self._access[sha256] = (size, True, utcnow())

    async def flush_access(self) -> None:
        batch, self._access = self._access, {}
        if batch:
            await self._run(self.catalog.touch_blobs, batch)

    async def run_flusher(self, every: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.flush_access()
            except HubMirrorError as e:  # e.g. a full disk: the accesses are dropped, serving goes on
                log.warning("could not record blob accesses: %s", e.message)
            except Exception:
                log.exception("could not record blob accesses")


def _client_message(e: HubMirrorError, ref: RepoRef, revision: str) -> str:
    if isinstance(e, RepoNotFound):
        return f"Repository not found: {ref} (upstream: not found, private, or no access)"
    if isinstance(e, RevisionNotFound):
        return f"Invalid rev id: {revision} (not found upstream for {ref})"
    return e.message


def _parse(v: Any) -> datetime:
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
            return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)
