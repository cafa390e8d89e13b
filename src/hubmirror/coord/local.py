"""Coordination on one box: in-process single flight, and flock in DATA/locks/ between the
processes of one machine (the server's workers, the CLI). A lock held by a process that dies is
released by the kernel at once, so a lease taken over here needs no time-to-live."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from ..model.names import RepoRef
from .limits import MemoryRateCounters

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One call in flight per key: callers that arrive meanwhile share its result or its error.
    (Once it is done the next caller runs it again: caching is the caller's business.)"""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await fn()
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved here: waiters get it through their own await
            raise
        finally:
            self._inflight.pop(key, None)


class FileLock:
    """flock on a file: shared or exclusive, blocking or not."""

    def __init__(self, path: Path, *, exclusive: bool = True, block: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.exclusive = exclusive
        self.block = block
        self._fd: int | None = None

    def acquire(self, block: bool | None = None) -> bool:
        block = self.block if block is None else block
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
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

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _FileLease:
    def __init__(self, name: str, lock: FileLock) -> None:
        self.name = name
        self.token = 1
        self._lock = lock

    def renew(self) -> bool:
        return self._lock._fd is not None

    def release(self) -> None:
        self._lock.release()


def _lease_file(root: Path, name: str) -> Path:
    return root / "leases" / (hashlib.sha1(name.encode()).hexdigest() + ".lock")


class LocalCoordinator:
    """flock in `data/locks`: every process of this box (server workers, CLI commands) agrees."""

    def __init__(self, data: Path, *, max_keys: int = 100_000) -> None:
        self.root = Path(data) / "locks"
        self.counters = MemoryRateCounters(max_keys=max_keys)

    def repo_lock(self, ref: RepoRef) -> FileLock:
        name = f"{ref.repo_type.value}--{ref.repo_id.replace('/', '--')}.lock"
        return FileLock(self.root / name, exclusive=True, block=False)

    def gc_lock(self, *, exclusive: bool = False) -> FileLock:
        return FileLock(self.root / "gc.lock", exclusive=exclusive, block=True)

    def lease(self, name: str, ttl: float) -> _FileLease | None:
        lock = FileLock(_lease_file(self.root, name), exclusive=True, block=False)
        return _FileLease(name, lock) if lock.acquire() else None

    def held(self, name: str) -> bool:
        probe = FileLock(_lease_file(self.root, name), exclusive=False, block=False)
        if probe.acquire():
            probe.release()
            return False
        return True

    def close(self) -> None:
        pass


def as_coordinator(x: object) -> object:
    """A data directory (Path) stands for the one-box coordinator in it."""
    if isinstance(x, (str, Path)):
        return LocalCoordinator(Path(x))
    return x
