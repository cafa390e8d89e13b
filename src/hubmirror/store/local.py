"""Blob store on a local filesystem.

Layout under `root`:

```
root/
├── sha256/ab/cd/abcd...ef      published blobs, read-only, named by their sha256
└── tmp/<random>.partial         writes in progress (same filesystem, so publish is a rename)
```

A write goes to `tmp/`, is hashed as it is written, fsynced, checked against the expected
sha256 and size, and only then linked into `sha256/` (if absent: an existing blob is never
replaced, and the writer learns whether it created the blob) and unlinked from `tmp/`. A crash leaves at most a `.partial`
file, which `sweep()` removes at the next start. A blob is never visible half-written.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import BlobNotFound, DigestMismatch, SizeMismatch, StoreError
from . import spool
from .base import BlobInfo, BlobStore, BlobWriter, check_sha256
from .spool import os_error as _os_error

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Move src to dst unless dst exists (renameat2 where the kernel and libc have it); True if
    moved. For filesystems without hard links (SMB, some FUSE mounts, exFAT)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        res = libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    except (AttributeError, OSError):
        res, err = -1, errno.ENOSYS
    else:
        err = ctypes.get_errno() if res != 0 else 0
    if res == 0:
        return True
    if err == errno.EEXIST:
        os.unlink(src)
        return False
    if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise OSError(err, os.strerror(err), str(dst))
    if dst.exists():  # no atomic no-replace here: check, then move (a same-bytes race at worst)
        os.unlink(src)
        return False
    os.replace(src, dst)
    return True


def _publish(src: Path, dst: Path) -> bool:
    """Publish src under dst only if absent; True if this call created it."""
    try:
        os.link(src, dst)
    except FileExistsError:
        os.unlink(src)
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        return _rename_noreplace(src, dst)
    os.unlink(src)
    return True


class _LocalWriter(spool.SpoolWriter):
    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        super().__init__(store.tmp_dir)

    def commit(self, sha256: str, size: int) -> BlobInfo:
        with self._lock:
            return self._commit(sha256, size)

    def _commit(self, sha256: str, size: int) -> BlobInfo:
        check_sha256(sha256)
        if self._done:
            raise StoreError("commit after commit or cancel")
        if self._size != size:
            self._cancel()
            raise SizeMismatch(f"blob {sha256}: expected {size} bytes, got {self._size}")
        actual = self._hash.hexdigest()
        if actual != sha256:
            self._cancel()
            raise DigestMismatch(f"blob {sha256}: content hashes to {actual}")
        try:
            os.fsync(self._fh.fileno())
            self._fh.close()
            final = self._store._path(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self._path, 0o444)
            created = _publish(self._path, final)  # only if absent: whoever created it knows it did
            _fsync_dir(final.parent)
        except OSError as e:
            self._cancel()
            raise _os_error(e, f"publish blob {sha256}") from e
        self._done = True
        return BlobInfo(sha256, size, created)

    def cancel(self) -> None:
        with self._lock:
            self._cancel()

    def _cancel(self) -> None:
        if self._done:
            return
        self._done = True
        self._hash.hexdigest()  # stops the hashing thread
        try:
            self._fh.close()
        finally:
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def stat(self, sha256: str) -> BlobInfo | None:
        try:
            st = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(sha256, st.st_size)

    def read(self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(sha256)
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} is not in the store") from None
        with fh:
            fh.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                n = chunk_size if remaining is None else min(chunk_size, remaining)
                data = fh.read(n)
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data

    def writer(self, sha256: str | None = None) -> BlobWriter:
        if sha256 is not None:
            check_sha256(sha256)  # a hint only: commit checks the bytes
        return _LocalWriter(self)

    def delete(self, sha256: str) -> bool:
        try:
            self._path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self) -> Iterator[BlobInfo]:
        for dirpath, _dirs, files in os.walk(self.blob_dir):
            for f in files:
                if len(f) == 64:
                    try:
                        yield BlobInfo(f, os.stat(os.path.join(dirpath, f)).st_size)
                    except FileNotFoundError:
                        continue  # deleted meanwhile

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    def local_path(self, sha256: str) -> Path | None:
        return self._path(sha256)

    def follow(self, name: str) -> int | None:
        return spool.follow(self.tmp_dir, name)

    def abandoned(self, name: str) -> Path | None:
        """The partial file `name` of a write whose process died (no live writer holds it), if any."""
        return spool.abandoned(self.tmp_dir, name)

    def sweep(self) -> int:
        return spool.sweep(self.tmp_dir)
