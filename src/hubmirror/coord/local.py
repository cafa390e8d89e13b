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


def claim_fd(fd: int, *, exclusive: bool = True) -> bool:
    """Lock an open file without waiting (flock: released when its last descriptor closes, so
    when its process dies); False if another process holds it. The spool files of writes in
    progress are held this way: sweeps leave them alone and find the ones of dead writers."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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

    def still_held(self) -> bool:
        return self._fd is not None  # flock goes only with the process (or release)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _FileLease:
    def __init__(self, name: str, lock: FileLock, token: int) -> None:
        self.name = name
        self.token = token
        self._lock = lock

    def renew(self) -> bool:
        return self._lock._fd is not None

    def release(self) -> None:
        self._lock.release()


def _lease_file(root: Path, name: str, kind: str = "lock") -> Path:
    return root / "leases" / (hashlib.sha1(name.encode()).hexdigest() + "." + kind)


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

    def lease(self, name: str, ttl: float, info: str = "") -> _FileLease | None:
        lock = FileLock(_lease_file(self.root, name), exclusive=True, block=False)
        if not lock.acquire():
            return None
        assert lock._fd is not None
        # the file says "<token>\n<info>": the token of the last holder, plus one
        try:
            token = int(os.pread(lock._fd, 32, 0).split(b"\n", 1)[0] or 0) + 1
        except ValueError:
            token = 1
        os.ftruncate(lock._fd, 0)
        os.pwrite(lock._fd, f"{token}\n{info}".encode(), 0)
        return _FileLease(name, lock, token)

    def held(self, name: str) -> bool:
        return self.holder_info(name) is not None

    def holder_info(self, name: str) -> str | None:
        path = _lease_file(self.root, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if claim_fd(fd, exclusive=False):
                return None  # nobody holds it
            data = os.pread(fd, 4096, 0).decode(errors="replace")
            return data.split("\n", 1)[1] if "\n" in data else ""
        finally:
            os.close(fd)  # (closing drops the shared claim, if taken)

    def interest(self, name: str) -> FileLock:
        return FileLock(_lease_file(self.root, name, "interest"), exclusive=False, block=False)

    def interested(self, name: str) -> bool:
        probe = FileLock(_lease_file(self.root, name, "interest"), exclusive=True, block=False)
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
