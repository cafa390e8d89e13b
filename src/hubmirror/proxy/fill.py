"""Single-flight fills: one upstream download per missing blob, streamed to every client that
wants it while it is written, verified before it is published. (A fill's own state and its
readers' handles are in flight.py.)

```
client A ─┐                              ┌─> spool file (store writer) ─> verify ─> publish (link)
client B ─┼─> FillReader ─> Fill(key) ───┤
client C ─┘   (own fd)     (one task)    └─> written counter + condition: readers pread() up to it
```

* Each client joins with a `FillReader` holding its own duplicate of the spool file's descriptor,
  taken the moment it joins, so it stays valid through publish or cancel (unlink). The fill
  closes its own descriptor as soon as it ends, and aborts the connections of readers still
  streaming a failed fill; every reader closes its descriptor when done: a failed fill's deleted
  spool file gives its space back at once.
* Bytes that are not verified yet reach a client only in a response whose last byte is held back
  until the blob is verified (see api/http.py); a bad or cut upstream body ends those
  connections early, never cleanly. Before its first unverified byte goes out, the fill writes a
  row into the journal (journal.py), so that a resume onto bytes of a fill that then failed is
  answered only when they prove right.
* Unverified bytes go out only up to the fill's last checkpoint: the journal row says how many
  bytes the fill had written and their sha256 (taken every CHECKPOINT_EVERY seconds while clients
  wait for more). So whatever happens to the process, even kill -9, the row already bounds what
  any client holds and proves it against the verified copy on any replica.
* When its last client has been gone for `orphan_grace` seconds, a fill stops and closes its
  upstream connection, unless a pinned, hosted or declared mirror's commit lists its blob, or
  another process waits for it.

Across processes (workers of one box, replicas sharing a database) a kept fill holds the lease
`fill:<key>` (coord/), whose info is its spool file's name. Another process that misses the same
blob does not download it again: on the same box it follows the spool file as it grows (a
follower fill, streamed to its clients like a fill of its own, verified when the holder
published the blob); elsewhere it waits until the holder published it (or gave up, or died:
the lease lapses, and the next request fetches it). A holder renews its lease just before it
publishes: one that lost it (stalled past its time to live) fails instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..catalog.schema import utcnow
from ..coord.base import Coordinator
from ..coord.local import as_coordinator
from ..errors import (
    DigestMismatch,
    HubMirrorError,
    InsufficientStorage,
    UpstreamUnavailable,
)
from ..hub import HubClient
from ..model.entries import Entry
from ..model.names import RepoRef
from ..store import BlobStore, BlobWriter
from ..store.verify import ContentCheck
from .flight import Fill, FillKey, FillReader, key_for
from .journal import Journal, Taint, hash_prefix, read_fd

log = logging.getLogger("hubmirror.proxy")

TAINTED = object()  # Filler.join: a fill of this blob failed (or is failing) meanwhile; decide again
WAIT = object()  # Filler.join: another replica fills it: Filler.wait_remote, then decide again

LEASE_TTL = 15.0  # seconds a dead holder's fill lease lasts (renewed every third of it; setting lease_ttl)
FOLLOW_POLL = 0.05  # seconds between looks at a followed spool file's size
HOLDER_POLL = 0.5  # seconds between asking whether a followed or awaited holder is still at it


@dataclass(frozen=True, slots=True)
class _Remote:
    info: str | None  # the holder's spool file name (None: its lease lapsed meanwhile)


def _release(lease: Any) -> None:
    try:
        lease.release()
    except Exception as e:  # noqa: BLE001 - it lapses on its own
        log.warning("could not release lease %s: %s", lease.name, e)


@dataclass
class FillStats:
    started: dict[str, int]  # by trigger: "full" (a whole-file GET) | "range"
    bytes: dict[str, int]
    failed: int = 0
    orphaned: int = 0  # stopped because every client had gone
    resumes_proven: int = 0  # resumes onto a failed fill's bytes, answered once proven right
    resumes_refused: int = 0
    followed: int = 0  # another process's fill of this box streamed through its spool file
    waited: int = 0  # waited for another replica's fill to publish


class Filler:
    def __init__(
        self,
        store: BlobStore,
        catalog: Catalog,
        client: HubClient,
        *,
        coord: Coordinator | Path,
        min_free: int,
        max_bytes: int | None,
        orphan_grace: float = 5.0,
        resume_guard: float = 7 * 86400.0,
        on_filled: Callable[[str, int], None] | None = None,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.lease_ttl = lease_ttl
        self.store = store
        self.catalog = catalog
        self.client = client
        self.coord: Coordinator = as_coordinator(coord)  # type: ignore[assignment]
        self.min_free = min_free
        self.max_bytes = max_bytes
        self.orphan_grace = orphan_grace
        self.journal = Journal(catalog, resume_guard)
        self.on_filled = on_filled
        self._fills: dict[FillKey, Fill] = {}
        self._starting: dict[FillKey, tuple[asyncio.Lock, int]] = {}  # per blob: who decides, how many wait
        self._watches: dict[str, asyncio.Future[None]] = {}  # lease name -> the wait for another replica
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = FillStats({"full": 0, "range": 0}, {"full": 0, "range": 0})
        self.upstream_fills = 0

    @property
    def in_flight(self) -> int:
        return len(self._fills)

    async def start(self) -> None:
        await self.journal.load()

    async def refresh_taints(self, entry: Entry) -> None:
        """Before deciding on a resume: learn what fills of other processes sent of this blob."""
        own = {f.journal_id for f in self._fills.values() if f.journal_id is not None}
        await self.journal.refresh(str(key_for(entry)), own)  # (unreadable: 503, never a guess)

    def taints(self, entry: Entry, start: int) -> list[Taint]:
        return self.journal.taints(str(key_for(entry)), start)

    async def prove_stored(self, entry: Entry, sha256: str, taints: list[Taint], start: int) -> bool:
        """Do the stored, verified blob's bytes prove those failed fills right for a resume at start?"""
        return await self.journal.prove(str(key_for(entry)), sha256, taints, start,
                                        lambda n: self.store.read(sha256, 0, n))

    async def prove_spool(self, entry: Entry, sha256: str, taints: list[Taint], start: int, fd: int) -> bool:
        """The same, from a verified fill's spool file (kept or not) through a reader's descriptor."""
        return await self.journal.prove(str(key_for(entry)), sha256, taints, start, lambda n: read_fd(fd, n))

    def join_active(self, entry: Entry) -> FillReader | None:
        """Join the fill in flight, if one is and it has not failed."""
        fill = self._fills.get(key_for(entry))
        return fill.join() if fill is not None and fill.error is None else None

    def failing(self, entry: Entry) -> Fill | None:
        """A fill of this blob that failed and is still recording what it sent (wait for it)."""
        fill = self._fills.get(key_for(entry))
        return fill if fill is not None and fill.error is not None else None

    async def join(self, ref: RepoRef, commit: str, entry: Entry, *, keep: bool, trigger: str,
                   start: int = 0) -> FillReader | None | object:
        """Join the fill of this entry's blob: the one in flight here, a new one (after a space
        check), or one another process of this box is running (followed through its spool file).
        None if the blob was published meanwhile: read it from the store. TAINTED if a fill of it
        failed meanwhile after sending bytes a resume at `start` may hold. WAIT if another replica
        fills it: `wait_remote`, then decide again."""
        key = key_for(entry)
        fill = self._fills.get(key)
        if fill is not None:
            return fill.join() if fill.error is None else TAINTED
        # one request of this process decides at a time per blob (the others then find its fill):
        # two that both asked for the lease would see it held, by this very process
        lock, waiting = self._starting.get(key, (asyncio.Lock(), 0))
        self._starting[key] = (lock, waiting + 1)
        try:
            async with lock:
                fill = self._fills.get(key)
                if fill is not None:
                    return fill.join() if fill.error is None else TAINTED
                return await self._start(ref, commit, entry, keep=keep, trigger=trigger, start=start)
        finally:
            lock, waiting = self._starting[key]
            if waiting == 1:
                del self._starting[key]
            else:
                self._starting[key] = (lock, waiting - 1)

    async def _start(self, ref: RepoRef, commit: str, entry: Entry, *, keep: bool, trigger: str,
                     start: int) -> FillReader | None | object:
        key = key_for(entry)
        if self.max_bytes is not None and entry.size > self.max_bytes:
            keep = False  # larger than the whole budget: stream it through, verified, without keeping it
        prepared = await asyncio.to_thread(self._prepare, entry, keep)
        if prepared is None:
            return None
        if isinstance(prepared, _Remote):
            return await self._follow_remote(ref, entry, prepared, start)
        writer, fd, wanted, lease = prepared
        if self.taints(entry, start):  # no await between this check and the join below
            await asyncio.to_thread(self._discard, writer, fd, lease)
            return TAINTED
        fill = self._fills.get(key)  # another request may have started it meanwhile
        if fill is not None:
            joined = fill.join() if fill.error is None else TAINTED  # before the next await
            await asyncio.to_thread(self._discard, writer, fd, lease)
            return joined
        fill = self._new_fill(key, entry.size, fd, writer.spool_name or "")
        fill.wanted = wanted
        fill.lease = lease
        self._fills[key] = fill
        reader = fill.join()
        self.stats.started[trigger] += 1
        self._spawn(fill, self._run(fill, writer, ref, commit, entry, keep, trigger), f"fill {ref}/{entry.path}")
        return reader

    def _new_fill(self, key: FillKey, size: int, fd: int, spool: str) -> Fill:
        fill = Fill(key, size, fd, spool)
        fill._on_orphan = self._orphaned
        fill._journal = self._journal_row
        fill._checkpoint = lambda jid, n, digest: self.catalog.fill_failed(jid, n, digest, n)
        return fill

    def _spawn(self, fill: Fill, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        fill.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_remote(self, ref: RepoRef, entry: Entry, remote: _Remote, start: int) -> FillReader | object:
        """Another process holds this blob's fill lease: follow its spool file if it is on this
        box, else WAIT."""
        key = key_for(entry)
        fd = await asyncio.to_thread(self.store.follow, remote.info) if remote.info else None
        if fd is None:
            return WAIT
        interest = self.coord.interest(key.lease)
        try:
            await asyncio.to_thread(interest.acquire, False)
        except BaseException:
            os.close(fd)
            raise
        fill = self._fills.get(key)  # (started here meanwhile)
        if fill is not None or self.taints(entry, start):
            os.close(fd)
            # joined before the next await: a fill closes its descriptor when it ends
            joined = TAINTED if fill is None or fill.error is not None else fill.join()
            await asyncio.to_thread(interest.release)
            return joined
        fill = self._new_fill(key, entry.size, fd, remote.info or "")
        fill.follower = True
        self._fills[key] = fill
        reader = fill.join()
        self.stats.followed += 1
        self._spawn(fill, self._follow(fill, entry, interest), f"follow {ref}/{entry.path}")
        return reader

    async def wait_remote(self, entry: Entry, alive: Callable[[], bool] | None) -> None:
        """Until no process holds this blob's fill lease (it published the blob, gave up, or
        died and its lease lapsed), while the client is still there. One watch per blob in this
        process, whatever the number of clients waiting (each costs the database a connection)."""
        name = key_for(entry).lease
        watch = self._watches.get(name)
        if watch is None or watch.done():
            watch = asyncio.ensure_future(self._watch(name))
            self._watches[name] = watch
            watch.add_done_callback(lambda w: self._watches.pop(name, None) if self._watches.get(name) is w else None)
        self.stats.waited += 1
        while not watch.done():
            await asyncio.wait({watch}, timeout=HOLDER_POLL)
            if alive is not None and not alive():
                raise ConnectionResetError("the client went away")
        watch.result()

    async def _watch(self, name: str) -> None:
        """Hold an interest in lease `name` (so its holder goes on without clients of its own)
        until nobody holds the lease."""
        interest = self.coord.interest(name)
        await asyncio.to_thread(interest.acquire, False)
        try:
            while await asyncio.to_thread(self.coord.held, name):
                await asyncio.sleep(HOLDER_POLL / 2)
        finally:
            await asyncio.to_thread(interest.release)

    def published(self, entry: Entry) -> str | None:
        """The sha256 of this entry's blob if it is in the store (a regular file's, once the
        catalog learnt it from the fill that published it)."""
        sha = entry.sha256
        if sha is None and not entry.lfs:
            sha = self.catalog.sha256_for_oids([entry.oid]).get(entry.oid)
        if sha is not None and self.store.stat(sha) is not None:
            return sha
        return None

    async def _journal_row(self, fill: Fill) -> int | None:
        if fill.bytes_ok or fill.done.is_set():
            return None
        return await asyncio.to_thread(self.catalog.fill_started, str(fill.key), fill.spool)

    def _prepare(self, entry: Entry, keep: bool) -> tuple[BlobWriter, int, bool, Any] | _Remote | None:
        # a fill ends (leaves _fills) only after it published: no fill in flight and the blob here
        # means one just ended, and the bytes are ready
        if entry.sha256 is not None and self.store.stat(entry.sha256) is not None:
            return None
        self._make_room(entry.size, keep)
        writer = self.store.writer(entry.sha256)
        lease = None
        try:
            fd = writer.spool_fd()
            if fd is None:
                raise HubMirrorError("internal: pull-through needs a store whose writer keeps a readable spool")
        except BaseException:
            writer.cancel()
            raise
        name = key_for(entry).lease
        try:
            if keep:  # one download per blob across processes: the fill lease
                lease = self.coord.lease(name, self.lease_ttl, writer.spool_name or "")
            if keep and lease is None:
                done = True  # another process fills it
            elif keep and self.published(entry) is not None:  # by a holder that just let go
                done = True
            else:
                done = False
                wanted = self.catalog.blob_wanted(entry.sha256 if entry.lfs else None, entry.oid)
        except BaseException:
            self._discard(writer, fd, lease)
            raise
        if done:
            self._discard(writer, fd, lease)
            return _Remote(self.coord.holder_info(name)) if lease is None else None
        return writer, fd, wanted, lease

    def _discard(self, writer: BlobWriter, fd: int, lease: Any = None) -> None:
        os.close(fd)
        writer.cancel()
        if lease is not None:
            _release(lease)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _orphaned(self, fill: Fill) -> None:
        if fill.wanted:
            return

        async def stop_later() -> None:
            while True:
                await asyncio.sleep(self.orphan_grace)
                if fill.readers or fill.done.is_set() or fill.task is None:
                    return
                if fill.lease is not None and await asyncio.to_thread(self.coord.interested, fill.key.lease):
                    continue  # other processes wait for this download
                break
            log.info("fill of %s stopped: its clients are gone", fill.key)
            self.stats.orphaned += 1
            fill.task.cancel()

        t = asyncio.create_task(stop_later())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _make_room(self, size: int, keep: bool) -> None:
        """Free-space check before a fill: evict least recently used pulled-through blobs if needed.
        A fill that is not kept still spools to disk, so it needs the space but not the budget."""
        def free() -> int:
            f = self.store.free_bytes()
            return f if f is not None else 1 << 62  # object storage: no limit to keep

        need_free = size + self.min_free
        over_budget = 0
        if self.max_bytes is not None and keep:
            over_budget = self.catalog.proxied_bytes() + size - self.max_bytes
        if free() >= need_free and over_budget <= 0:
            return
        for sha, blob_size in self.catalog.eviction_candidates():
            if free() >= need_free and over_budget <= 0:
                break
            if self.store.delete(sha):
                log.info("evicted pulled-through blob %s (%d bytes)", sha, blob_size)
            self.catalog.forget_blob(sha)
            over_budget -= blob_size
        if free() < need_free:
            raise InsufficientStorage(
                f"not enough disk space to fetch {size} bytes (free {free()}, keeping {self.min_free} free)"
            )

    async def _run(self, fill: Fill, writer: BlobWriter, ref: RepoRef, commit: str, entry: Entry, keep: bool,
                   trigger: str) -> None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fill")
        gc_lock = self.coord.gc_lock()
        locked = False
        try:
            check = ContentCheck(entry, f"{ref}/{entry.path}")

            def put(chunk: bytes) -> None:
                writer.write(chunk)
                check.update(chunk)

            # Writing and hashing run on one thread of their own, in order, while the event loop
            # goes on receiving: the download is pipelined instead of waiting for each chunk.
            loop = asyncio.get_running_loop()
            pending: deque[tuple[asyncio.Future[None], int]] = deque()

            async def settle(keep: int) -> None:
                # readers see each write as soon as it is done, in order; at most `keep` stay queued
                while pending and (len(pending) > keep or pending[0][0].done()):
                    fut, n = pending.popleft()
                    await fut
                    await fill.advanced(n)

            async def write(chunk: bytes) -> None:
                pending.append((loop.run_in_executor(pool, put, chunk), len(chunk)))
                self.stats.bytes[trigger] += len(chunk)
                await settle(8)

            self.upstream_fills += 1
            try:
                await self.client.download(ref, commit, entry.path, write, entry.size)
                await settle(0)
            finally:
                # on an error, the writes still queued fail the same way (or were never needed):
                # wait for them without letting their errors hide the first one
                await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
                pool.shutdown(wait=False)
            sha256 = check.verified_sha256(writer)
            fill.sha256 = sha256
            fill.bytes_ok = True  # whatever a client got of it is right: no journal needed
            await self._verified(fill, entry, sha256)
            if keep:
                # from publishing until the catalog knows the blob, gc must not sweep it (held only
                # now: on PostgreSQL each holder costs a connection)
                await asyncio.to_thread(gc_lock.acquire)
                locked = True
                if fill.lease is not None and not await asyncio.to_thread(fill.lease.renew):
                    # stalled past its lease: another process may be fetching it: it publishes
                    raise UpstreamUnavailable(f"{ref}/{entry.path}: this fill lost its lease; not published here")
                await asyncio.to_thread(writer.commit, sha256, entry.size)
                if not entry.lfs:
                    await asyncio.to_thread(self.catalog.fill_sha256, entry.oid, sha256)
                # recorded at once (reads are batched): the disk budget must see this blob
                await asyncio.to_thread(self.catalog.touch_blobs, {sha256: (entry.size, True, utcnow())})
                locked = False
                await asyncio.to_thread(gc_lock.release)
                if self.on_filled:
                    self.on_filled(sha256, entry.size)
            else:
                await asyncio.to_thread(writer.cancel)  # verified, streamed, not kept (cache rules)
            # readers get the last byte only now, once it is published: a client that has its whole
            # file finds it stored on its next request
            fill.verified = True
            self._ended(fill, None, None)
            await fill.finish(None)
        except BaseException as e:
            await self._fail(fill, e, f"{ref}/{entry.path}", writer.cancel)
        finally:
            if fill.lease is not None:  # after the catalog knows the blob: followers find it
                await asyncio.to_thread(_release, fill.lease)
            if locked:
                await asyncio.to_thread(gc_lock.release)

    async def _fail(self, fill: Fill, e: BaseException, what: str, cleanup: Callable[[], None]) -> None:
        """A fill (or a follower) ends without a verified blob: record what its clients got, cut
        them, and re-raise a cancellation."""
        fill.error = e  # at once, before any await: no reader sends another byte of it
        failed: Taint | None = None
        try:
            failed = await self._failed(fill, e)
        except BaseException:  # cancelled again (shutdown): the journal row's checkpoint stands
            failed = None
        finally:
            cleanup()  # (a writer: close and unlink now, whatever happens next)
            if isinstance(e, HubMirrorError):
                log.warning("fill of %s failed: %s", what, e.message)
            else:
                log.warning("fill of %s failed: %r", what, e)
            self.stats.failed += 1
            if not fill.done.is_set():
                self._ended(fill, e, failed)
        await fill.finish(e)
        if isinstance(e, asyncio.CancelledError):
            raise e

    async def _follow(self, fill: Fill, entry: Entry, interest: Any) -> None:
        """Stream another process's fill of this box through its spool file: bytes as its size
        grows; verified once the holder published the blob; failed if the holder let go (or
        died) without publishing it."""
        what = f"{entry.path} (followed)"
        h = hashlib.sha256()  # of the bytes this process read: they are what its clients get
        hashed = 0

        def extend(fd: int, upto: int) -> None:
            nonlocal hashed
            for chunk in read_fd(fd, upto, start=hashed):
                h.update(chunk)
                hashed += len(chunk)

        try:
            last_look = 0.0
            while True:
                assert fill.fd is not None
                size = min(os.fstat(fill.fd).st_size, entry.size)
                if size > fill.written:
                    await asyncio.to_thread(extend, fill.fd, size)
                    await fill.advanced(hashed - fill.written)
                now = time.monotonic()
                if now - last_look >= HOLDER_POLL or size >= entry.size:
                    last_look = now
                    held = await asyncio.to_thread(self.coord.held, fill.key.lease)
                    sha256 = await asyncio.to_thread(self.published, entry)
                    if sha256 is not None:
                        size = os.fstat(fill.fd).st_size
                        if size != entry.size:
                            raise UpstreamUnavailable(f"{what}: the followed spool file has {size} bytes, "
                                                      f"not {entry.size}")
                        await asyncio.to_thread(extend, fill.fd, size)
                        if hashed > fill.written:
                            await fill.advanced(hashed - fill.written)
                        # the blob was published (by its holder, or by anyone): these bytes are it
                        # only if they hash to it
                        if h.hexdigest() != sha256:
                            raise DigestMismatch(f"{what}: the followed bytes hash to {h.hexdigest()}, "
                                                 f"not to the published {sha256}")
                        fill.sha256 = sha256
                        fill.bytes_ok = True
                        await self._verified(fill, entry, sha256)
                        fill.verified = True
                        self._ended(fill, None, None)
                        await fill.finish(None)
                        return
                    if not held:
                        raise UpstreamUnavailable(f"{what}: the fill this process followed stopped "
                                                  f"without publishing it")
                await asyncio.sleep(FOLLOW_POLL if size < entry.size else HOLDER_POLL / 5)
        except BaseException as e:
            await self._fail(fill, e, what, lambda: None)
        finally:
            await asyncio.to_thread(interest.release)

    async def _verified(self, fill: Fill, entry: Entry, sha256: str) -> None:
        """The blob verified: its journal row goes, and earlier failed fills of it are compared with
        its bytes (read back from the spool, kept or not), once each."""
        try:
            if fill._journaling is not None:
                jid = await asyncio.shield(fill._journaling)
                if jid is not None:
                    await asyncio.to_thread(self.catalog.fill_forget, jid)
            taints = self.journal.pending(str(fill.key))
            if taints and fill.fd is not None:
                fd = fill.fd
                await self.journal.prove(str(fill.key), sha256, taints, 0, lambda n: read_fd(fd, n))
        except (HubMirrorError, OSError) as e:  # a full disk: rows stay, resumes are refused: safe
            log.warning("could not update the journal of %s: %s", fill.key, e)

    async def _failed(self, fill: Fill, e: BaseException) -> Taint | None:
        """A fill ends unverified: if its bytes reached clients, hash exactly those (from the spool)
        and record them, so a later resume can be proved or refused."""
        if fill.bytes_ok or not fill.sent_unverified or fill.fd is None:
            return None  # (bytes that verified and then failed to publish are right all the same)
        try:
            jid = fill.journal_id
            if jid is None and fill._journaling is not None:
                jid = await asyncio.shield(fill._journaling)
            if jid is None:
                return None
            fd, n = fill.fd, fill.sent_end
            digest = await asyncio.to_thread(lambda: hash_prefix(read_fd(fd, n)))
            taint = Taint(jid, n, digest, n, time.time())
            await asyncio.to_thread(self.catalog.fill_failed, jid, n, digest, n)
            return taint
        except (HubMirrorError, OSError) as err:  # the row stays as it is: resumes are refused: safe
            log.warning("could not record the failed fill of %s: %s", fill.key, err)
            return Taint(fill.journal_id or -1, None, None, None, time.time())

    def _ended(self, fill: Fill, error: BaseException | None, taint: Taint | None) -> None:
        """Everything a fill's end changes, in one step with no await: it leaves _fills and its
        taint (if any) is registered together, so no request sees neither; its own descriptor is
        closed; readers still streaming a failed fill are cut (a stalled client must not keep the
        deleted file). Waiters are woken by `Fill.finish`."""
        self._fills.pop(fill.key, None)
        if taint is not None:
            self.journal.add(str(fill.key), taint)
        fill.close_fd()  # readers hold their own duplicates
        fill.error = error
        fill.done.set()
        if error is not None:
            for r in list(fill.readers):
                if r.abort is not None:
                    r.abort()

