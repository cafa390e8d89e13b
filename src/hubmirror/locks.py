"""Cross-process locks in the data dir (flock), for the single-box deployment.

* `RepoLock`: at most one sync of a repo at a time.
* `GcLock`: writers (sync, import, pull-through fills) hold it shared from the moment they publish
  a blob until the catalog references it; `gc` and `purge` hold it exclusive while they decide
  what is unreferenced and delete it. So a blob is never swept between "published" and "recorded".
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .model.names import RepoRef


class _FileLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None

    def _acquire(self, mode: int, block: bool) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, mode | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RepoLock(_FileLock):
    def __init__(self, data: Path, ref: RepoRef) -> None:
        super().__init__(data / "locks" / f"{ref.repo_type.value}--{ref.repo_id.replace('/', '--')}.lock")

    def acquire(self) -> bool:
        return self._acquire(fcntl.LOCK_EX, block=False)


class GcLock(_FileLock):
    def __init__(self, data: Path, *, exclusive: bool = False) -> None:
        super().__init__(data / "locks" / "gc.lock")
        self.exclusive = exclusive

    def acquire(self, block: bool = True) -> bool:
        return self._acquire(fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH, block)

    def __enter__(self) -> GcLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
