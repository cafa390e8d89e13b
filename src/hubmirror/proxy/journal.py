"""The journal of fills whose bytes reached clients before they were verified.

A client's transfer that a failed fill aborted leaves the client holding bytes nobody verified;
it may resume (a Range starting past byte 0) and stitch new bytes onto them. So:

* the first time a fill is about to send an unverified byte, a row goes into the catalog
  (`unverified_fills`) naming the blob and the fill's spool file; a fill that verifies removes
  its row before it publishes;
* a fill that ends without verifying, after sending, records how far its bytes reached clients
  (`sent_end`) and the sha256 of exactly those bytes, read back from its spool file;
* after a crash the row has neither: the next start hashes the partial file the dead fill left
  (what survived of it), with `sent_end` unknown;
* a Range from `start` with `0 < start <= sent_end` (any start > 0 when unknown) may stitch onto
  such bytes. It is answered only if a verified copy proves them: the verified bytes
  `[0, prefix_len)` hash to the recorded sha256 and `start <= prefix_len`. A proof clears the
  row; a disproof is remembered (so a resume cannot make the server hash a file again and again)
  and the resume is refused (409 ResumeRefused) for `resume_guard` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog
from ..catalog.schema import utcnow


@dataclass
class Taint:
    """A fill that sent bytes and never verified."""

    id: int
    prefix_len: int | None  # bytes hashed into prefix_sha256 (None: nothing is known)
    prefix_sha256: str | None
    sent_end: int | None  # no client got a byte at or past this offset (None: unknown)
    at: float  # wall-clock time
    verdict: dict[str, bool] = field(default_factory=dict)  # verified copy (sha256) -> its prefix matched

    def covers(self, start: int) -> bool:
        """Could a client asking for bytes from `start` on hold bytes of this fill before them?"""
        return start > 0 and (self.sent_end is None or start <= self.sent_end)



def hash_prefix(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def read_fd(fd: int, n: int, chunk: int = 1 << 20, *, start: int = 0) -> Iterator[bytes]:
    """Bytes [start, n) of an open file, without moving its offset."""
    pos = start
    while pos < n:
        data = os.pread(fd, min(chunk, n - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data


class Journal:
    def __init__(self, catalog: Catalog, resume_guard: float) -> None:
        self.catalog = catalog
        self.resume_guard = resume_guard
        self._taints: dict[str, list[Taint]] = {}  # blob key -> its failed fills

    async def load(self) -> None:
        rows = await asyncio.to_thread(self.catalog.unverified_fills, self.resume_guard)
        now_wall, now_db = time.time(), utcnow()
        for fid, key, at, plen, psha, sent in rows:
            when = now_wall - (now_db - at).total_seconds()
            self._taints.setdefault(key, []).append(Taint(fid, plen, psha, sent, when))

    async def refresh(self, key: str, own: set[int]) -> None:
        """Learn the failed and in-flight fills of `key` that other processes (workers, replicas)
        recorded in the catalog: a client resuming here may hold bytes one of them sent. `own`:
        the rows of this process's fills in flight (they are its own business)."""
        known = {t.id for t in self._taints.get(key, [])} | own
        rows = await asyncio.to_thread(self.catalog.unverified_fills_of, key)
        now_wall, now_db = time.time(), utcnow()
        for fid, at, plen, psha, sent in rows:
            if fid in known or any(t.id == fid for t in self._taints.get(key, [])):
                continue
            when = now_wall - (now_db - at).total_seconds()
            if now_wall - when <= self.resume_guard:
                self._taints.setdefault(key, []).append(Taint(fid, plen, psha, sent, when))

    def taints(self, key: str, start: int) -> list[Taint]:
        """The failed fills of this blob a client resuming at `start` may hold bytes of."""
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
        return [t for t in live if t.covers(start)]

    def pending(self, key: str) -> list[Taint]:
        return list(self._taints.get(key, []))

    def add(self, key: str, taint: Taint) -> None:
        self._taints.setdefault(key, []).append(taint)

    async def prove(self, key: str, sha256: str, taints: list[Taint], start: int,
                    read: Callable[[int], Iterator[bytes]]) -> bool:
        """Check each taint against a verified copy (`read(n)` yields its first n bytes, `sha256`
        names it), once per copy; forget those whose every sent byte is proven. True if a client
        resuming at `start` over all of them holds only proven bytes."""
        ok = True
        for t in taints:
            if t.prefix_len is None or t.prefix_sha256 is None:
                ok = False  # its process died and its partial file was gone: nothing to compare
                continue
            v = t.verdict.get(sha256)
            if v is None:
                n = t.prefix_len
                v = await asyncio.to_thread(lambda: hash_prefix(read(n))) == t.prefix_sha256
                t.verdict[sha256] = v
                if v and t.sent_end is not None and t.sent_end <= t.prefix_len:
                    await asyncio.to_thread(self.catalog.fill_forget, t.id)  # all it sent is proven
                    rest = [x for x in self._taints.get(key, []) if x.id != t.id]
                    if rest:
                        self._taints[key] = rest
                    else:
                        self._taints.pop(key, None)
            if not v or start > t.prefix_len:
                ok = False
        return ok


def recover_crashed_fills(catalog: Catalog, store: Any) -> int:
    """Before the store sweeps the partial files of a process that died mid-fill: hash what
    survived of each one a journal row names, so that its clients' resumes can be proved against a
    verified copy up to that length instead of being refused for `resume_guard`. `sent_end` stays
    unknown: the file may have lost what it had not yet flushed."""
    n = 0
    for fill_id, name in catalog.crashed_fills():
        path = store.abandoned(name)
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
        catalog.fill_failed(fill_id, size, h.hexdigest(), None)
        n += 1
    return n
