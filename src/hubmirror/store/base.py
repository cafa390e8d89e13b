"""The blob store interface: a small key-and-bytes API keyed by sha256.

Modelled on the Docker registry's storage driver: a handful of methods and a writer that
ends in `commit` (verify and publish) or `cancel` (discard). Callers never see a path
unless the driver offers one for zero-copy serving (`local_path`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InvalidInput(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


@dataclass(frozen=True, slots=True)
class BlobInfo:
    sha256: str
    size: int
    created: bool = True  # from a commit: False if the blob was already there (another writer's)


class BlobWriter(ABC):
    """Bytes written here become visible only after a successful `commit`."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Bytes written so far."""

    @property
    @abstractmethod
    def sha256(self) -> str:
        """sha256 of the bytes written so far (for content whose digest is not known in advance)."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    def spool_fd(self) -> int | None:
        """A new read-only descriptor of the bytes written so far, readable while the write goes on
        (pull-through streams from it to the clients that joined a fill; the caller closes it). It
        stays valid after commit or cancel. None if the driver keeps no such copy."""
        return None

    @property
    def spool_name(self) -> str | None:
        """A name for the bytes in progress that `BlobStore.abandoned` recognises after a crash."""
        return None

    @abstractmethod
    def commit(self, sha256: str, size: int) -> BlobInfo:
        """Check digest and size, make the bytes durable, publish under `sha256`.

        Raises DigestMismatch or SizeMismatch (and discards the bytes) if they differ.
        Publishing a blob that already exists is not an error: the store is content-addressed;
        the existing blob is kept and the result says `created=False`.
        """

    @abstractmethod
    def cancel(self) -> None:
        """Discard everything written. Safe to call twice or after commit (then a no-op)."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class BlobStore(ABC):
    @abstractmethod
    def stat(self, sha256: str) -> BlobInfo | None: ...

    @abstractmethod
    def read(self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield bytes [start, end) of a blob (end=None: to the end). BlobNotFound if there is none."""

    @abstractmethod
    def writer(self, sha256: str | None = None) -> BlobWriter:
        """A new write. `sha256`: the digest the caller expects the bytes to have, when it knows it
        (an LFS file); a hint, not a promise (commit still checks what was written). An object store
        needs it to upload while the bytes are written: a multipart upload's key is fixed when it
        starts. Without it, such a store uploads everything at commit."""

    @abstractmethod
    def delete(self, sha256: str) -> bool:
        """Remove a blob; True if it existed."""

    @abstractmethod
    def list(self) -> Iterator[BlobInfo]:
        """Every published blob with its size, in no particular order (streamed, never all at once)."""

    def free_bytes(self) -> int | None:
        """Space left for new blobs, or None if the driver has no such limit (object storage)."""
        return None

    def local_path(self, sha256: str) -> Path | None:
        """A filesystem path to serve the blob zero-copy from, if the driver has one."""
        return None

    def url(self, sha256: str, *, expires: int | None = None, filename: str | None = None) -> str | None:
        """A short-lived URL a client can GET the blob from directly (object storage), if the
        driver can make one: valid for `expires` seconds (None: the driver's setting), answered
        with a Content-Disposition naming `filename` if given. It does not check that the blob
        exists."""
        check_sha256(sha256)
        return None

    def follow(self, name: str) -> int | None:
        """A read-only descriptor of the growing spool `name` of a live write by another process
        of this box (a pull-through fill another worker streams from), or None."""
        return None

    def abandoned(self, name: str) -> Path | None:
        """The partial bytes `name` (a writer's `spool_name`) of a write whose process died."""
        return None

    def sweep(self) -> int:
        """Remove leftovers of interrupted writes; returns how many. Called at start."""
        return 0
