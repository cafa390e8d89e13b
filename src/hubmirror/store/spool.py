"""Spool files: the local bytes of a write in progress, shared by every driver.

A writer creates `<random>.partial` in a spool folder and holds an exclusive flock on it until it
commits or cancels, so that `sweep` and `abandoned` in another process (a restart, another worker)
leave a live write alone and find the files of writers that died. The file is hashed on a thread
of its own while it is written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import secrets
import threading
from pathlib import Path
from typing import BinaryIO

from ..coord.local import claim_fd
from ..errors import InsufficientStorage, StoreError
from .base import BlobWriter

SUFFIX = ".partial"


class Hasher:
    """sha256 on a thread of its own, fed in order, so hashing overlaps the disk writes."""

    _STOP = b""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="blob-hash", daemon=True)
        self._thread.start()
        self._final: str | None = None

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is self._STOP:
                return
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._final is not None:
            raise StoreError("write after the digest was taken")
        if chunk:
            self._queue.put(chunk)

    def hexdigest(self) -> str:
        if self._final is None:
            self._queue.put(self._STOP)
            self._thread.join()
            self._final = self._hash.hexdigest()
        return self._final


def os_error(e: OSError, what: str) -> StoreError | InsufficientStorage:
    """`what` is the action: "write a blob"."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"disk full: cannot {what}")
    return StoreError(f"cannot {what}: {e.strerror or e}")


def create(folder: Path) -> tuple[Path, BinaryIO]:
    """A new spool file in `folder`, open for writing (unbuffered) and locked by this process."""
    path = folder / f"{secrets.token_hex(12)}{SUFFIX}"
    try:
        fh = open(path, "xb", buffering=0)  # noqa: SIM115 - the writer closes it
    except OSError as e:
        raise os_error(e, "create a blob") from e
    claim_fd(fh.fileno())  # a new name: nobody else holds it
    return path, fh


def abandoned(folder: Path, name: str) -> Path | None:
    """The spool file `name` of a write whose process died (no live writer holds it), if any."""
    p = folder / Path(name).name
    try:
        with open(p, "rb") as fh:
            if not claim_fd(fh.fileno(), exclusive=False):
                return None
    except OSError:  # held by a live writer (BlockingIOError), gone, unreadable
        return None
    return p


def follow(folder: Path, name: str) -> int | None:
    """A read-only descriptor of the spool file `name` of a live write in another process of this
    box (it grows as that writer writes), or None: no such file here, or its writer is dead."""
    if Path(name).name != name or not name.endswith(SUFFIX):
        return None
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    if claim_fd(fd, exclusive=False):  # nobody writes it any more (closing drops the claim)
        os.close(fd)
        return None
    return fd


def sweep(folder: Path) -> int:
    """Remove the spool files of dead writers; returns how many."""
    n = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for p in entries:
        try:
            with open(p, "rb") as fh:
                if not claim_fd(fh.fileno()):
                    continue  # a writer in another process is still at work
                p.unlink()
                n += 1
        except (FileNotFoundError, IsADirectoryError):
            pass
    return n


class SpoolWriter(BlobWriter):
    """What every store's writer shares: a new spool file in `folder`, held (flock) until commit or
    cancel so that a sweep in another process leaves a live write alone, hashed as it is written.
    A failed write records its error (raised again by later writes) and cancels at once, so the
    space comes back now. Subclasses add `commit` and `cancel`, and `_written` to act on bytes."""

    _doing = "write a blob"  # for a write error's message

    def __init__(self, folder: Path) -> None:
        self._path, self._fh = create(folder)
        self._hash = Hasher()
        self._size = 0
        self._error: BaseException | None = None  # the first failure, raised again by later writes
        self._done = False
        # commit (often on a worker thread) and cancel (on shutdown, from another) exclude each
        # other: a cancel during a commit waits for it, then has nothing left to do
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        """The digest of everything written; no more writes are accepted after asking."""
        return self._hash.hexdigest()

    def spool_fd(self) -> int | None:
        return os.open(self._path, os.O_RDONLY)

    @property
    def spool_name(self) -> str | None:
        return self._path.name

    def write(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._done:
            raise StoreError("write after commit or cancel")
        view = memoryview(data)
        try:
            while view:
                n = self._fh.write(view)
                view = view[n:]
        except OSError as e:
            self._error = os_error(e, self._doing)
            self.cancel()  # closes and unlinks at once: the space is returned now
            raise self._error from e
        self._hash.update(bytes(data))
        self._size += len(data)
        self._written()

    def _written(self) -> None:
        """After each write (the S3 writer hands full parts to its upload)."""
