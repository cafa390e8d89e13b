"""Single-flight fills: one upstream download per missing blob, streamed to every client that
wants it while it is written, verified before it is published.

```
client A ─┐                          ┌─> spool file (store writer) ─> verify ─> publish (rename)
client B ─┼─> Fill(key) ── upstream ─┤
client C ─┘   (one task)             └─> written counter + condition: readers pread() up to it
```

Readers open the spool file as soon as they join, so they keep a valid handle whether the fill
ends in publish (rename) or cancel (unlink). The last byte of a full body is sent only after
verification: a bad or cut upstream body ends the client's connection early, never cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Catalog
from ..catalog.catalog import utcnow
from ..errors import (
    DigestMismatch,
    HubMirrorError,
    InsufficientStorage,
    SizeMismatch,
    StoreError,
)
from ..hub import HubClient
from ..locks import GcLock
from ..model.entries import Entry
from ..model.names import RepoRef
from ..store import BlobStore
from ..store.verify import ContentCheck

log = logging.getLogger("hubmirror.proxy")



@dataclass(frozen=True, slots=True)
class FillKey:
    """LFS blobs are known by sha256 before download; regular files only by git oid."""

    kind: str  # sha256 | oid
    value: str


def key_for(entry: Entry) -> FillKey:
    if entry.sha256:
        return FillKey("sha256", entry.sha256)
    return FillKey("oid", entry.oid)


class Fill:
    def __init__(self, key: FillKey, size: int) -> None:
        self.key = key
        self.size = size
        self.written = 0
        self.fd: int | None = None  # read handle on the spool file, closed when the Fill is dropped
        self.sha256: str | None = None
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self.started = asyncio.Event()
        self._cond = asyncio.Condition()
        self.readers = 0

    async def advanced(self, n: int) -> None:
        self.written += n
        async with self._cond:
            self._cond.notify_all()

    async def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        self.started.set()
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, n: int) -> None:
        """Until at least n bytes are written or the fill ended."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.written >= n or self.done.is_set())


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
        on_filled: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.client = client
        self.data_dir = data_dir
        self.min_free = min_free
        self.max_bytes = max_bytes
        self.on_filled = on_filled
        self._fills: dict[FillKey, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.upstream_fills = 0

    def active(self, entry: Entry) -> Fill | None:
        return self._fills.get(key_for(entry))

    async def get(self, ref: RepoRef, commit: str, entry: Entry, *, keep: bool) -> Fill:
        """The fill of this entry's blob: the one in flight, or a new one (after a space check)."""
        key = key_for(entry)
        fill = self._fills.get(key)
        if fill is not None:
            return fill
        if self.max_bytes is not None and entry.size > self.max_bytes:
            keep = False  # larger than the whole budget: stream it through, verified, without keeping it
        await asyncio.to_thread(self._make_room, entry.size, keep)
        fill = self._fills.get(key)  # another request may have started it meanwhile
        if fill is not None:
            return fill
        fill = Fill(key, entry.size)
        self._fills[key] = fill
        task = asyncio.create_task(self._run(fill, ref, commit, entry, keep), name=f"fill {ref}/{entry.path}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await fill.started.wait()
        return fill

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _run(self, fill: Fill, ref: RepoRef, commit: str, entry: Entry, keep: bool) -> None:
        writer = None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fill")
        gc_lock = GcLock(self.data_dir)
        try:
            await asyncio.to_thread(gc_lock.acquire)
            writer = await asyncio.to_thread(self.store.writer)
            if writer.spool_path is not None:
                # opened before any byte is written, so it stays valid through publish (rename) or
                # cancel (unlink); closed only when no reader holds this Fill any more
                fill.fd = await asyncio.to_thread(os.open, writer.spool_path, os.O_RDONLY)
                weakref.finalize(fill, os.close, fill.fd)
            fill.started.set()
            check = ContentCheck(entry, f"{ref}/{entry.path}")

            def put(chunk: bytes) -> None:
                assert writer is not None
                writer.write(chunk)
                check.update(chunk)

            # Writing and hashing run on one thread of their own, in order, while the event loop
            # goes on receiving: the download is pipelined instead of waiting for each chunk.
            loop = asyncio.get_running_loop()
            pending: deque[tuple[asyncio.Future[None], int]] = deque()

            async def settle(keep: int) -> None:
                while len(pending) > keep:
                    fut, n = pending.popleft()
                    await fut
                    await fill.advanced(n)

            async def write(chunk: bytes) -> None:
                pending.append((loop.run_in_executor(pool, put, chunk), len(chunk)))
                await settle(8)

            self.upstream_fills += 1
            try:
                await self.client.download(ref, commit, entry.path, write, entry.size)
            finally:
                try:
                    await settle(0)
                finally:
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
            await fill.finish(None)
        except BaseException as e:
            if writer is not None:
                await asyncio.to_thread(writer.cancel)
            if not isinstance(e, (HubMirrorError, DigestMismatch, SizeMismatch, StoreError)):
                log.warning("fill of %s/%s failed: %r", ref, entry.path, e)
            else:
                log.warning("fill of %s/%s failed: %s", ref, entry.path, e)
            await fill.finish(e)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            gc_lock.release()
            self._fills.pop(fill.key, None)
