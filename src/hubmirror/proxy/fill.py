"""Single-flight fills: one upstream download per missing blob, streamed to every client that
wants it while it is written, verified before it is published.

```
client A ─┐                              ┌─> spool file (store writer) ─> verify ─> publish (rename)
client B ─┼─> FillReader ─> Fill(key) ───┤
client C ─┘   (own fd)     (one task)    └─> written counter + condition: readers pread() up to it
```

* Each client joins with a `FillReader` holding its own duplicate of the spool file's descriptor,
  taken the moment it joins, so it stays valid through publish (rename) or cancel (unlink). The
  fill closes its own descriptor as soon as it ends and every reader closes its own when done:
  a failed fill's deleted spool file gives its space back at once.
* Bytes that are not verified yet reach a client only in a response whose last byte is held back
  until the blob is verified (see api/http.py); a bad or cut upstream body ends those
  connections early, never cleanly.
* A fill whose bytes reached a client and that then did not verify (bad bytes, a cut upstream,
  no clients left, the process killed) leaves a `Taint` in the catalog's journal
  (`unverified_fills`): how many bytes it had written and their sha256. A client holding some of
  them may resume (a Range starting past byte 0); that is answered only from a verified copy
  whose first bytes hash the same, i.e. when the failed fill's bytes were right after all, and
  refused (409 ResumeRefused) otherwise, for `resume_guard` seconds.
* When its last client has been gone for `orphan_grace` seconds, a fill stops and closes its
  upstream connection, unless a pinned, hosted or declared mirror's commit lists its blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..catalog.schema import utcnow
from ..errors import HubMirrorError, InsufficientStorage
from ..hub import HubClient
from ..locks import GcLock
from ..model.entries import Entry
from ..model.names import RepoRef
from ..store import BlobStore, BlobWriter
from ..store.verify import ContentCheck

log = logging.getLogger("hubmirror.proxy")


@dataclass(frozen=True, slots=True)
class FillKey:
    """LFS blobs are known by sha256 before download; regular files by their git blob id."""

    kind: str  # sha256 | oid
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def key_for(entry: Entry) -> FillKey:
    if entry.lfs and entry.sha256:
        return FillKey("sha256", entry.sha256)
    return FillKey("oid", entry.oid)


class Fill:
    def __init__(self, key: FillKey, size: int, fd: int) -> None:
        self.key = key
        self.size = size
        self.written = 0
        self.fd: int | None = fd  # the fill's read handle on the spool file; readers dup it
        self.sha256: str | None = None
        self.verified = False
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self._cond = asyncio.Condition()
        self.readers = 0
        self.sent_unverified = False  # a byte reached a client before the blob was verified
        self.sent_end = 0  # the end of the furthest range of bytes sent to a client
        self.wanted = False  # a pinned/hosted/mirrored commit lists it: go on without clients
        self.task: asyncio.Task[None] | None = None
        self.journal_id: int | None = None
        self._on_orphan: Callable[[Fill], None] | None = None

    def join(self) -> FillReader:
        """A reader with its own descriptor. Call it with no `await` between finding this fill and
        joining: the fill closes its descriptor when it ends."""
        if self.fd is None:
            raise HubMirrorError("internal: joined a fill that has ended")
        self.readers += 1
        return FillReader(self, os.dup(self.fd))

    def left(self) -> None:
        self.readers -= 1
        if self.readers == 0 and not self.done.is_set() and self._on_orphan is not None:
            self._on_orphan(self)

    async def advanced(self, n: int) -> None:
        self.written += n
        async with self._cond:
            self._cond.notify_all()

    async def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, n: int, timeout: float | None = None) -> bool:
        """Until at least n bytes are written or the fill ended; False if `timeout` passed first."""
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.written >= n or self.done.is_set())
            except TimeoutError:
                return False
        return True

    async def wait_change(self, seen: int, timeout: float) -> None:
        """Until more than `seen` bytes are written or the fill ended, or `timeout` passed."""
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.written > seen or self.done.is_set())
            except TimeoutError:
                pass

    def close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FillReader:
    """One client's handle on a fill: its own descriptor of the spool file, released once."""

    def __init__(self, fill: Fill, fd: int) -> None:
        self.fill = fill
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.fill.left()

    def __enter__(self) -> FillReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a safety net: handles are released explicitly
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


@dataclass
class Taint:
    """A fill that sent bytes and never verified: its first `prefix_len` bytes hashed to
    `prefix_sha256` (both None if its process died: nothing is known, nothing can be proved)."""

    id: int
    prefix_len: int | None
    prefix_sha256: str | None
    sent_end: int | None  # no client got a byte at or past this offset (None: unknown)
    at: float  # wall-clock time

    def covers(self, start: int) -> bool:
        """Could a client asking for bytes from `start` on hold bytes of this fill just before them?"""
        return self.sent_end is None or start <= self.sent_end


@dataclass
class FillStats:
    started: dict[str, int]  # by trigger: "full" (a whole-file GET) | "range"
    bytes: dict[str, int]
    failed: int = 0
    orphaned: int = 0  # stopped because every client had gone


def recover_crashed_fills(catalog: Catalog, store: Any) -> int:
    """Before the store sweeps the partial files of a process that died mid-fill: hash each one a
    journal row names, so that its clients' resumes can later be checked against a verified copy
    instead of being refused for `resume_guard`. Returns how many were recovered."""
    n = 0
    abandoned = getattr(store, "abandoned", None)
    if abandoned is None:
        return 0
    for fill_id, name in catalog.crashed_fills():
        path = abandoned(name)
        if path is None:
            continue  # still being written by a live process, or gone: nothing to learn
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except OSError:
            continue
        # no client can have got a byte that was never written
        catalog.fill_failed(fill_id, size, h.hexdigest(), size)
        n += 1
    return n


class Filler:
    def __init__(
        self,
        store: BlobStore,
        catalog: Catalog,
        client: HubClient,
        *,
        data_dir: Path,
        min_free: int,
        max_bytes: int | None,
        orphan_grace: float = 5.0,
        resume_guard: float = 7 * 86400.0,
        on_filled: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.client = client
        self.data_dir = data_dir
        self.min_free = min_free
        self.max_bytes = max_bytes
        self.orphan_grace = orphan_grace
        self.resume_guard = resume_guard
        self.on_filled = on_filled
        self._fills: dict[FillKey, Fill] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._taints: dict[str, list[Taint]] = {}  # str(key) -> fills of it that sent unverified bytes
        self.stats = FillStats({"full": 0, "range": 0}, {"full": 0, "range": 0})
        self.upstream_fills = 0

    @property
    def in_flight(self) -> int:
        return len(self._fills)

    async def start(self) -> None:
        """Load the journal: failed fills, and fills of a process that died, whose bytes reached clients."""
        rows = await asyncio.to_thread(self.catalog.unverified_fills, self.resume_guard)
        now_wall, now_db = time.time(), utcnow()
        for fid, key, at, plen, psha, sent in rows:
            when = now_wall - (now_db - at).total_seconds()
            self._taints.setdefault(key, []).append(Taint(fid, plen, psha, sent, when))

    def taints(self, entry: Entry, start: int) -> list[Taint]:
        """The failed fills of this blob whose bytes a client resuming at `start` may hold."""
        key = str(key_for(entry))
        found = self._taints.get(key)
        if not found:
            return []
        now = time.time()
        live = [t for t in found if now - t.at <= self.resume_guard]
        if len(live) != len(found):
            if live:
                self._taints[key] = live
            else:
                self._taints.pop(key, None)
        return [t for t in live if t.covers(start)] if start > 0 else []

    async def clear_taints(self, entry: Entry, sha256: str, taints: list[Taint]) -> bool:
        """Compare each failed fill's bytes with the verified blob `sha256`; forget the ones that
        were right. True if none is left (a resume over them is safe)."""
        key = str(key_for(entry))
        ok = True
        for t in taints:
            if t.prefix_len is None or t.prefix_sha256 is None:
                ok = False
                continue
            if not await asyncio.to_thread(self._prefix_matches, sha256, t.prefix_len, t.prefix_sha256):
                ok = False
                continue
            await asyncio.to_thread(self.catalog.fill_forget, t.id)
            rest = [x for x in self._taints.get(key, []) if x.id != t.id]
            if rest:
                self._taints[key] = rest
            else:
                self._taints.pop(key, None)
        return ok

    def _prefix_matches(self, sha256: str, n: int, expected: str) -> bool:
        info = self.store.stat(sha256)
        if info is None or info.size < n:
            return False
        h = hashlib.sha256()
        for chunk in self.store.read(sha256, 0, n):
            h.update(chunk)
        return h.hexdigest() == expected

    def join_active(self, entry: Entry) -> FillReader | None:
        fill = self._fills.get(key_for(entry))
        return fill.join() if fill is not None else None

    async def join(self, ref: RepoRef, commit: str, entry: Entry, *, keep: bool, trigger: str) -> FillReader | None:
        """Join the fill of this entry's blob: the one in flight, or a new one (after a space check).
        None if the blob was published meanwhile (a fill that just ended): read it from the store."""
        key = key_for(entry)
        fill = self._fills.get(key)
        if fill is not None:
            return fill.join()
        if self.max_bytes is not None and entry.size > self.max_bytes:
            keep = False  # larger than the whole budget: stream it through, verified, without keeping it
        prepared = await asyncio.to_thread(self._prepare, key, entry, keep)
        if prepared is None:
            return None
        writer, fd, journal_id, wanted = prepared
        fill = self._fills.get(key)  # another request may have started it meanwhile
        if fill is not None:
            await asyncio.to_thread(self._discard, writer, fd, journal_id)
            return fill.join()
        fill = Fill(key, entry.size, fd)
        fill.journal_id = journal_id
        fill.wanted = wanted
        fill._on_orphan = self._orphaned
        self._fills[key] = fill
        reader = fill.join()
        self.stats.started[trigger] += 1
        task = asyncio.create_task(self._run(fill, writer, ref, commit, entry, keep, trigger),
                                   name=f"fill {ref}/{entry.path}")
        fill.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return reader

    def _prepare(self, key: FillKey, entry: Entry, keep: bool) -> tuple[BlobWriter, int, int, bool] | None:
        # a fill ends (leaves _fills) only after it published: no fill in flight and the blob here
        # means one just ended, and the bytes are ready
        if entry.sha256 is not None and self.store.stat(entry.sha256) is not None:
            return None
        self._make_room(entry.size, keep)
        writer = self.store.writer()
        try:
            path = writer.spool_path
            if path is None:
                raise HubMirrorError("internal: pull-through needs a store with a local spool file")
            fd = os.open(path, os.O_RDONLY)
        except BaseException:
            writer.cancel()
            raise
        try:
            journal_id = self.catalog.fill_started(str(key), path.name)
            wanted = self.catalog.blob_wanted(entry.sha256 if entry.lfs else None, entry.oid)
        except BaseException:
            os.close(fd)
            writer.cancel()
            raise
        return writer, fd, journal_id, wanted

    def _discard(self, writer: BlobWriter, fd: int, journal_id: int) -> None:
        os.close(fd)
        writer.cancel()
        self.catalog.fill_forget(journal_id)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _orphaned(self, fill: Fill) -> None:
        if fill.wanted:
            return

        async def stop_later() -> None:
            await asyncio.sleep(self.orphan_grace)
            if fill.readers == 0 and not fill.done.is_set() and fill.task is not None:
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
            return shutil.disk_usage(self.data_dir).free

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
        gc_lock = GcLock(self.data_dir)
        locked = False
        try:
            await asyncio.to_thread(gc_lock.acquire)
            locked = True
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
            if keep:
                await asyncio.to_thread(writer.commit, sha256, entry.size)
                if not entry.lfs:
                    await asyncio.to_thread(self.catalog.fill_sha256, entry.oid, sha256)
                # recorded at once (reads are batched): the disk budget must see this blob
                await asyncio.to_thread(self.catalog.touch_blobs, {sha256: (entry.size, True, utcnow())})
                if self.on_filled:
                    self.on_filled(sha256, entry.size)
            else:
                await asyncio.to_thread(writer.cancel)  # verified, streamed, not kept (cache rules)
            fill.sha256 = sha256
            fill.verified = True
            await self._end(fill, None)
            if keep and self._taints.get(str(fill.key)):  # earlier failed fills: were their bytes right?
                try:
                    await self.clear_taints(entry, sha256, list(self._taints.get(str(fill.key), [])))
                except (HubMirrorError, OSError) as e:
                    log.warning("could not compare failed fills of %s: %s", fill.key, e)
        except BaseException as e:
            prefix = None
            if fill.sent_unverified and not fill.verified:
                try:  # what was written (and so what any client can hold), for a later comparison
                    prefix = (writer.size, await asyncio.to_thread(lambda: writer.sha256))
                except HubMirrorError:
                    prefix = None
            await asyncio.to_thread(writer.cancel)
            if isinstance(e, HubMirrorError):
                log.warning("fill of %s/%s failed: %s", ref, entry.path, e.message)
            else:
                log.warning("fill of %s/%s failed: %r", ref, entry.path, e)
            self.stats.failed += 1
            if not fill.done.is_set():
                await self._end(fill, e, prefix)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            if locked:
                gc_lock.release()

    async def _end(self, fill: Fill, error: BaseException | None, prefix: tuple[int, str] | None = None) -> None:
        self._fills.pop(fill.key, None)
        fill.close_fd()  # readers hold their own duplicates
        try:
            if error is not None and fill.sent_unverified and fill.journal_id is not None:
                # clients hold bytes nobody verified: keep the journal row, with what they were
                plen, psha = prefix if prefix is not None else (None, None)
                self._taints.setdefault(str(fill.key), []).append(
                    Taint(fill.journal_id, plen, psha, fill.sent_end, time.time()))
                if prefix is not None:
                    await asyncio.to_thread(self.catalog.fill_failed, fill.journal_id, prefix[0], prefix[1],
                                            fill.sent_end)
            elif fill.journal_id is not None:
                await asyncio.to_thread(self.catalog.fill_forget, fill.journal_id)
        except HubMirrorError as e:  # a full disk: the row stays as it is; a resume is refused; safe
            log.warning("could not update the journal of %s: %s", fill.key, e.message)
        await fill.finish(error)
