"""One sync of one repo: resolve revisions, list, fetch only what is missing, verify, publish.

```
refs (1 upstream call) -> for each revision: commit sha
   commit already mirrored?  -> move the ref, done
   else: tree(commit) -> filter include/exclude -> for each file:
        blob in store (by sha256, or by git oid for regular files)?  -> reuse
        else download (parallel, resumable) while hashing; verify sha256 (LFS) or
        git blob sha1 (regular) and size; publish the blob
   record commit + entries + ref move in one catalog transaction
```

Everything is addressed by commit sha once resolved, so an upstream branch that moves during
the sync cannot mix two snapshots; readers see the old commit until the transaction commits.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..catalog import Catalog, RefUpdate, RepoRow
from ..coord.base import Coordinator
from ..coord.local import as_coordinator
from ..errors import (
    DigestMismatch,
    GatedRepo,
    HubMirrorError,
    MirrorFrozen,
    RepoNotFound,
    RevisionNotFound,
    SizeMismatch,
    StoreError,
    SyncBusy,
    UpstreamBadBody,
)
from ..hub import HubClient
from ..model.access import upstream_gated
from ..model.entries import Commit, Entry
from ..model.mirror import MirrorSpec, is_pattern
from ..model.names import RepoRef, is_commit_sha
from ..store import BlobStore
from ..store.verify import ContentCheck

log = logging.getLogger("hubmirror.sync")

VERIFY_ATTEMPTS = 3  # a file whose bytes do not verify is fetched again, at most this often




class Progress(Protocol):
    def plan(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, path: str) -> None: ...


class _NoProgress:
    def plan(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, path: str) -> None: ...


@dataclass
class RevisionResult:
    revision: str
    commit: str
    status: str  # synced | up-to-date


async def _fence(result: SyncResult) -> None:
    """Before a sync publishes: is its repo lock still its own? (On PostgreSQL the lock goes with
    a session the server ended; another replica may be syncing the repo now.)"""
    if result.lock is not None and not await asyncio.to_thread(result.lock.still_held):
        raise SyncBusy(f"{result.ref}: this sync lost its repo lock (its database session ended); another "
                       f"process may be syncing it; nothing more is published by this one")


@dataclass
class SyncResult:
    ref: RepoRef
    status: str = "running"  # synced | up-to-date | failed
    revisions: list[RevisionResult] = field(default_factory=list)
    files_fetched: int = 0
    bytes_fetched: int = 0
    files_reused: int = 0
    bytes_reused: int = 0
    upstream_calls: int = 0
    error: str | None = None
    run_id: int | None = None
    lock: Any = field(default=None, repr=False)  # the repo lock this sync holds (its fence)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.ref.repo_id,
            "repo_type": self.ref.repo_type.value,
            "status": self.status,
            "revisions": [r.__dict__ for r in self.revisions],
            "files_fetched": self.files_fetched,
            "bytes_fetched": self.bytes_fetched,
            "files_reused": self.files_reused,
            "bytes_reused": self.bytes_reused,
            "upstream_calls": self.upstream_calls,
            "error": self.error,
        }


def matches(path: str, include: list[str], exclude: list[str]) -> bool:
    """Hub-style allow/ignore patterns (fnmatch on the full path, like huggingface_hub)."""
    if include and not any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p + "/*") for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p + "/*") for p in exclude)


class Syncer:
    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        client: HubClient,
        coord: Coordinator | Path,
        *,
        parallel: int = 4,
        on_published: Callable[[RepoRef], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.client = client
        self.coord: Coordinator = as_coordinator(coord)  # type: ignore[assignment]
        self.parallel = parallel
        self.on_published = on_published
        self.retag = False
        self.on_finished: Callable[[SyncResult, float], None] | None = None  # (result, seconds): metrics

    async def sync(
        self, spec: MirrorSpec, *, trigger: str = "cli", progress: Progress | None = None, retag: bool = False,
        actor: str | None = None, client: str | None = None,
    ) -> SyncResult:
        """`actor`/`client`: who asked, for the audit log (default: the trigger: schedule, webhook...)."""
        ref = spec.ref
        if spec.frozen:
            raise MirrorFrozen(f"mirror {ref} is frozen: it is served as it is and not synced (unfreeze it first)")
        self.retag = retag
        lock = self.coord.repo_lock(ref)
        if not await asyncio.to_thread(lock.acquire):
            raise SyncBusy(f"a sync of {ref} is already running")
        result = SyncResult(ref, lock=lock)
        calls0 = self.client.stats.calls
        t0 = time.monotonic()
        await asyncio.to_thread(self.catalog.close_interrupted_runs, ref)
        result.run_id = await asyncio.to_thread(self.catalog.start_run, ref, trigger)
        gc_lock = self.coord.gc_lock()
        try:
            await asyncio.to_thread(gc_lock.acquire)  # waits while a gc sweeps
            await self._sync(spec, result, progress or _NoProgress())
            result.status = "synced" if any(r.status == "synced" for r in result.revisions) else "up-to-date"
        except HubMirrorError as e:
            result.status = "failed"
            result.error = e.message
            e.sync_result = result  # type: ignore[attr-defined]  # what the CLI reports (--json)
            await asyncio.to_thread(self.catalog.emit_sync_failed, ref, e, trigger)  # events/: notify
            raise
        except BaseException as e:  # also cancellation (server shutdown) and Ctrl-C: never left "running"
            result.status = "failed"
            result.error = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
            raise
        finally:
            result.upstream_calls = self.client.stats.calls - calls0
            if self.on_finished is not None:
                self.on_finished(result, time.monotonic() - t0)
            await asyncio.to_thread(
                self.catalog.finish_run,
                result.run_id,
                status=result.status,
                commits={r.revision: r.commit for r in result.revisions},
                files_fetched=result.files_fetched,
                bytes_fetched=result.bytes_fetched,
                files_reused=result.files_reused,
                bytes_reused=result.bytes_reused,
                upstream_calls=result.upstream_calls,
                error=result.error,
            )
            try:
                await asyncio.to_thread(
                    functools.partial(self.catalog.audit, "sync", ref, actor=actor or trigger, client=client,
                                      trigger=trigger, status=result.status, run=result.run_id,
                                      files_fetched=result.files_fetched, error=result.error))
            except HubMirrorError as e:  # a full disk: the run row says it all already
                log.warning("could not audit the sync of %s: %s", ref, e.message)
            gc_lock.release()
            lock.release()
        return result

    async def note_gone(self, ref: RepoRef, err: RepoNotFound) -> RepoNotFound:
        """The upstream says a repo does not exist: mark a mirrored one gone (once), keep serving it."""
        mirrored = await asyncio.to_thread(self.catalog.get_repo, ref)
        if mirrored is None:
            return err
        if await asyncio.to_thread(self.catalog.mark_gone, mirrored.pk, err.message):
            await asyncio.to_thread(self.catalog.audit, "gone-upstream", ref, message=err.message)
            await asyncio.to_thread(self.catalog.emit_event, "repo-gone", ref, message=err.message)
        return RepoNotFound(f"{ref} is gone upstream ({err.message}); everything mirrored stays served")

    async def resolve_revisions(self, spec: MirrorSpec) -> list[tuple[str, str, str | None]]:
        """(revision, commit, full ref name or None for a bare commit) for every wanted revision."""
        ref = spec.ref
        upstream_refs = await self.client.refs(ref)
        out: list[tuple[str, str, str | None]] = []
        for rev in spec.revisions:
            if is_pattern(rev):
                for name, commit in sorted(upstream_refs.items()):
                    for prefix in ("refs/heads/", "refs/tags/"):
                        if name.startswith(prefix) and fnmatch.fnmatchcase(name[len(prefix):], rev):
                            out.append((name[len(prefix):], commit, name))
                continue
            if is_commit_sha(rev):
                out.append((rev, rev, None))
                continue
            names = [rev] if rev.startswith("refs/") else [f"refs/heads/{rev}", f"refs/tags/{rev}"]
            for name in names:
                if name in upstream_refs:
                    out.append((rev, upstream_refs[name], name))
                    break
            else:
                if rev.startswith("refs/"):  # refs/pr/N is not in the refs listing
                    out.append((rev, await self.client.resolve(ref, rev), rev))
                else:
                    raise RevisionNotFound(f"{ref}: upstream has no branch or tag {rev!r}")
        return out

    async def _sync(self, spec: MirrorSpec, result: SyncResult, progress: Progress) -> None:
        ref = spec.ref
        try:
            wanted = await self.resolve_revisions(spec)
        except RepoNotFound as e:
            raise await self.note_gone(ref, e) from None
        repo = await asyncio.to_thread(self.catalog.ensure_repo, ref, "mirror")
        await asyncio.to_thread(self.catalog.clear_gone, repo.pk)
        if repo.origin == "proxy":  # a repo first pulled through, now declared: it is a mirror from now on
            repo = await asyncio.to_thread(self.catalog.set_origin, repo, "mirror")
        for revision, commit, refname in wanted:
            current = (await asyncio.to_thread(self.catalog.refs, repo)).get(refname) if refname else None
            before = current  # for the commit-mirrored event
            repointed = (refname is not None and refname.startswith("refs/tags/") and current is not None
                         and current != commit and not self.retag)
            known = await asyncio.to_thread(self.catalog.get_commit, repo, commit)
            if known is None:
                # the commit is mirrored (addressable by sha) even when its tag is not moved
                await self._mirror_commit(spec, repo, commit, refname, result, progress, move=not repointed)
                status = "synced"
                current = (await asyncio.to_thread(self.catalog.refs, repo)).get(refname) if refname else None
            else:
                status = "up-to-date"
            if repointed:
                # a tag is a promise: keep ours, record the upstream's move, flag it in status
                assert refname is not None
                events = await asyncio.to_thread(self.catalog.audit_events, ref, "tag-repointed-upstream")
                if not any(ev["detail"].get("tag") == refname and ev["detail"].get("upstream") == commit
                           for ev in events):
                    log.warning("%s: upstream re-pointed %s from %s to %s; keeping ours", ref, refname, current, commit)
                    await asyncio.to_thread(self.catalog.audit, "tag-repointed-upstream", ref, tag=refname,
                                            mirrored=current, upstream=commit)
                    await asyncio.to_thread(self.catalog.emit_event, "tag-repointed", ref, tag=refname,
                                            mirrored=current, upstream=commit)
                result.revisions.append(RevisionResult(revision, str(current), "tag-kept"))
                continue
            if refname is not None and current != commit:
                await _fence(result)
                await asyncio.to_thread(
                    self.catalog.record_commit, repo, known or Commit(commit), [],
                    [RefUpdate(refname, commit, expect=current)], f"sync ({result.run_id})",
                )
                if refname.startswith("refs/tags/") and current is not None:
                    await asyncio.to_thread(self.catalog.audit, "tag-moved", ref, tag=refname, old=current, new=commit)
                status = "synced"
            result.revisions.append(RevisionResult(revision, commit, status))
            if status == "synced":  # events/: notify and post-sync hooks
                await asyncio.to_thread(self.catalog.emit_commit_mirrored, repo, revision, refname, before, commit)
        if self.on_published:
            self.on_published(ref)

    async def _mirror_commit(
        self, spec: MirrorSpec, repo: RepoRow, commit: str, refname: str | None, result: SyncResult, progress: Progress,
        *, move: bool = True,
    ) -> None:
        ref = spec.ref
        info = await self.client.repo_info(ref, commit)
        if info.get("private") or info.get("gated"):
            if not spec.allow_gated:
                raise GatedRepo(f"{ref} is private or gated upstream: mirroring it would serve it to anyone who "
                                f"can reach this mirror; set allow_gated = true on this mirror to do so anyway")
        # only the users and groups an access rule names may read a private or gated upstream repo
        await asyncio.to_thread(self.catalog.set_visibility, repo, private=bool(info.get("private")),
                                gated=upstream_gated(info.get("gated")))
        listing = await self.client.tree(ref, commit)
        files = [e for e in listing if e.is_file and matches(e.path, spec.include, spec.exclude)]
        keep_dirs = {"/".join(f.path.split("/")[:i]) for f in files for i in range(1, f.path.count("/") + 1)}
        dirs = [e for e in listing if not e.is_file and e.path in keep_dirs]

        # what do we have already?
        def plan() -> tuple[list[Entry], list[Entry]]:
            have, need = [], []
            for f in files:
                sha = f.sha256 if f.lfs else self.catalog.sha256_for_oid(f.oid)
                if sha and self.store.stat(sha) is not None:
                    have.append(Entry(f.path, "file", f.oid, f.size, sha, f.lfs, f.pointer_size))
                else:
                    need.append(f)
            return have, need

        have, need = await asyncio.to_thread(plan)
        result.files_reused += len(have)
        result.bytes_reused += sum(f.size for f in have)
        progress.plan(len(need), sum(f.size for f in need))

        sem = asyncio.Semaphore(self.parallel)

        async def fetch(f: Entry) -> Entry:
            async with sem:
                e = await self._fetch(ref, commit, f, progress)
                result.files_fetched += 1
                result.bytes_fetched += f.size
                progress.file_done(f.path)
                return e

        tasks = [asyncio.ensure_future(fetch(f)) for f in need]
        try:
            fetched = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

        info = await self.client.commit_info(ref, commit)
        # last_commit: inherited from the commit this ref pointed at, where a path is unchanged
        def record() -> None:
            prev_sha = self.catalog.refs(repo).get(refname) if refname else None
            prev = {e.path: e for e in self.catalog.list_entries(repo, prev_sha, recursive=True)} if prev_sha else {}
            entries = []
            for e in [*have, *fetched, *dirs]:
                p = prev.get(e.path)
                last = p.last_commit if p is not None and p.oid == e.oid and p.type == e.type else commit
                entries.append(Entry(e.path, e.type, e.oid, e.size, e.sha256, e.lfs, e.pointer_size, last))
            moves = [RefUpdate(refname, commit, expect=prev_sha)] if refname and move else []
            self.catalog.record_commit(repo, info, entries, moves, reason=f"sync ({result.run_id})")

        await _fence(result)
        await asyncio.to_thread(record)

    async def complete(self, repo: RepoRow, commit: str, progress: Progress | None = None) -> int:
        """Fetch every blob of an already recorded commit that the store lacks (pinning a
        pulled-through or evicted commit). Returns how many files were fetched."""
        progress = progress or _NoProgress()
        gc_lock = self.coord.gc_lock()
        await asyncio.to_thread(gc_lock.acquire)
        try:
            files = await asyncio.to_thread(self.catalog.list_entries, repo, commit, recursive=True, files_only=True)

            def missing() -> list[Entry]:
                out = []
                for f in files:
                    sha = f.sha256 or self.catalog.sha256_for_oid(f.oid)
                    if not sha or self.store.stat(sha) is None:
                        out.append(f)
                return out

            need = await asyncio.to_thread(missing)
            progress.plan(len(need), sum(f.size for f in need))
            for f in need:
                e = await self._fetch(repo.ref, commit, f, progress)
                if not f.lfs and e.sha256:
                    await asyncio.to_thread(self.catalog.fill_sha256, f.oid, e.sha256)
                progress.file_done(f.path)
            return len(need)
        finally:
            gc_lock.release()

    async def _fetch(self, ref: RepoRef, commit: str, f: Entry, progress: Progress) -> Entry:
        last_error: Exception | None = None
        for _attempt in range(VERIFY_ATTEMPTS):
            writer = await asyncio.to_thread(self.store.writer, f.sha256)
            check = ContentCheck(f, f"{ref}/{f.path}")

            def put(chunk: bytes) -> None:
                writer.write(chunk)
                check.update(chunk)

            async def write(chunk: bytes) -> None:
                await asyncio.to_thread(put, chunk)
                progress.advance(len(chunk))

            try:
                await self.client.download(ref, commit, f.path, write, f.size)
                sha256 = check.verified_sha256(writer)
                await asyncio.to_thread(writer.commit, sha256, f.size)
                return Entry(f.path, "file", f.oid, f.size, sha256, f.lfs, f.pointer_size)
            except (DigestMismatch, SizeMismatch) as e:
                writer.cancel()
                last_error = e
                log.warning("%s/%s failed verification (%s); fetching again", ref, f.path, e)
            except UpstreamBadBody as e:
                writer.cancel()
                last_error = e  # wrong length: fetch again
                log.warning("%s/%s: %s; fetching again", ref, f.path, e)
            except BaseException:
                writer.cancel()
                raise
        raise StoreError(f"{ref}/{f.path}: bytes from the upstream failed verification {VERIFY_ATTEMPTS} times: {last_error}")
