"""One fill in flight: what its readers share (the spool file's descriptor, how far it is
written and checkpointed, its verdict), each reader's own handle on it, and the key that names a
blob across processes. The Filler (fill.py) runs fills; this is their state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import HubMirrorError
from ..model.entries import Entry
from .journal import read_fd

log = logging.getLogger("hubmirror.proxy")

CHECKPOINT_EVERY = 0.2  # seconds between journal checkpoints while clients wait for bytes


@dataclass(frozen=True, slots=True)
class FillKey:
    """LFS blobs are known by sha256 before download; regular files by their git blob id. The size
    is part of the key: an upstream listing the same sha256 with another size gets a fill of its
    own (which then fails verification), never bytes of a different length."""

    kind: str  # sha256 | oid
    value: str
    size: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}:{self.size}"

    @property
    def lease(self) -> str:
        return f"fill:{self}"


def key_for(entry: Entry) -> FillKey:
    if entry.lfs and entry.sha256:
        return FillKey("sha256", entry.sha256, entry.size)
    return FillKey("oid", entry.oid, entry.size)


class Fill:
    def __init__(self, key: FillKey, size: int, fd: int, spool: str) -> None:
        self.key = key
        self.size = size
        self.spool = spool  # the spool file's name, for the journal
        self.written = 0
        self.fd: int | None = fd  # the fill's read handle on the spool file; readers dup it
        self.sha256: str | None = None
        self.verified = False  # verified and published: the last byte may go
        self.bytes_ok = False  # verified (maybe not yet published)
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self._cond = asyncio.Condition()
        self.readers: set[FillReader] = set()
        self.sent_unverified = False  # a byte reached a client before the blob was verified
        self.sent_end = 0  # the end of the furthest range of bytes sent to a client
        self.wanted = False  # a pinned/hosted/mirrored commit lists it: go on without clients
        self.task: asyncio.Task[None] | None = None
        self.journal_id: int | None = None
        self.checkpointed = 0  # unverified bytes may go to clients up to here (the journal says so)
        self.version = 0  # grows with every change readers may wait for
        self.lease: Any = None  # coord Lease of a kept fill (None: a follower, or not kept)
        self.follower = False  # streams another process's fill from its spool file
        self._journaling: asyncio.Task[int | None] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._journal: Callable[[Fill], Any] | None = None
        self._checkpoint: Callable[[int, int, str], None] | None = None  # (journal id, length, sha256)
        self._on_orphan: Callable[[Fill], None] | None = None

    def join(self) -> FillReader:
        """A reader with its own descriptor. Call it with no `await` between finding this fill and
        joining: the fill closes its descriptor when it ends."""
        if self.fd is None:
            raise HubMirrorError("internal: joined a fill that has ended")
        r = FillReader(self, os.dup(self.fd))
        self.readers.add(r)
        return r

    def left(self, r: FillReader) -> None:
        self.readers.discard(r)
        if not self.readers and not self.done.is_set() and self._on_orphan is not None:
            self._on_orphan(self)

    async def journaled(self) -> bool:
        """Before the first unverified byte goes to a client: the journal row exists (one write,
        shared by every reader). False if it could not be written (a full disk): then nothing
        unverified may be sent."""
        if self.journal_id is not None:
            return True
        if self._journal is None:
            return False
        if self._journaling is None:
            self._journaling = asyncio.ensure_future(self._journal(self))
        try:
            self.journal_id = await asyncio.shield(self._journaling)
        except HubMirrorError:
            return False
        return self.journal_id is not None

    @property
    def sendable(self) -> int:
        """How far clients may be sent bytes now: all that is written once verified, else up to
        the last checkpoint in the journal."""
        return self.written if self.bytes_ok else min(self.written, self.checkpointed)

    def want_checkpoint(self) -> None:
        """A reader waits for written bytes past the checkpoint: keep checkpointing (one task)."""
        if self._checkpointing is None and self.journal_id is not None and self.fd is not None:
            self._checkpointing = asyncio.ensure_future(self._checkpoints(os.dup(self.fd)))

    async def _checkpoints(self, fd: int) -> None:
        """Every CHECKPOINT_EVERY seconds while unverified: hash what was written since the last
        checkpoint (read back from the spool) and record (length, sha256 of the prefix) in the
        journal row, then let readers send up to there. A failure to record stops it: readers
        then wait for the verdict (safe)."""
        h = hashlib.sha256()
        hashed = 0

        def extend(upto: int) -> str:
            nonlocal hashed
            for chunk in read_fd(fd, upto, start=hashed):
                h.update(chunk)
                hashed += len(chunk)
            if hashed != upto:
                raise OSError(f"spool file shorter than {upto} bytes")
            return h.copy().hexdigest()

        try:
            while not self.bytes_ok and not self.done.is_set() and self.error is None and self.journal_id is not None:
                target = self.written
                if target > self.checkpointed and self._checkpoint is not None:
                    digest = await asyncio.to_thread(extend, target)
                    if self.error is not None:  # failed meanwhile: its own record of what it sent stands
                        break
                    await asyncio.to_thread(self._checkpoint, self.journal_id, target, digest)
                    self.checkpointed = target
                    await self.changed()
                await asyncio.sleep(CHECKPOINT_EVERY)
        except (HubMirrorError, OSError) as e:
            log.warning("fill of %s: journal checkpoints stopped: %s", self.key, e)
        finally:
            os.close(fd)

    async def changed(self) -> None:
        self.version += 1
        async with self._cond:
            self._cond.notify_all()

    async def advanced(self, n: int) -> None:
        self.written += n
        await self.changed()

    async def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        if self._checkpointing is not None:
            self._checkpointing.cancel()
        await self.changed()

    async def wait_change(self, timeout: float) -> None:
        """Until something changes (bytes written, a checkpoint, the end), or `timeout` passed."""
        seen = self.version
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.version != seen or self.done.is_set())
            except TimeoutError:
                pass

    def close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FillReader:
    """One client's handle on a fill: its own descriptor of the spool file, released once. The
    streaming code sets `abort` (the client's connection), so a failed fill can cut it at once."""

    def __init__(self, fill: Fill, fd: int) -> None:
        self.fill = fill
        self.fd: int | None = fd
        self.abort: Callable[[], None] | None = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.fill.left(self)

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
