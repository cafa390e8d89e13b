"""What proves a file's bytes, as the Hub lists it: the sha256 of an LFS file (the writer hashes
it), the git blob sha1 of a regular file (hashed here, alongside). One rule for sync, pull-through
and scrub."""

from __future__ import annotations

import hashlib

from ..errors import DigestMismatch
from ..model.entries import Entry
from ..model.gitobj import git_blob_header
from .base import BlobWriter


class ContentCheck:
    def __init__(self, entry: Entry, what: str) -> None:
        self.entry = entry
        self.what = what
        self._sha1 = None if entry.lfs else hashlib.sha1(git_blob_header(entry.size))

    def update(self, chunk: bytes) -> None:
        if self._sha1 is not None:
            self._sha1.update(chunk)

    def verified_sha256(self, writer: BlobWriter) -> str:
        """The sha256 to publish the written bytes under, once they match the entry; DigestMismatch if not.
        (Sizes are checked by the download and again by `writer.commit`.)"""
        if self.entry.lfs:
            assert self.entry.sha256 is not None
            if writer.sha256 != self.entry.sha256:
                raise DigestMismatch(f"{self.what}: bytes hash to {writer.sha256}, expected {self.entry.sha256}")
            return self.entry.sha256
        assert self._sha1 is not None
        if self._sha1.hexdigest() != self.entry.oid:
            raise DigestMismatch(f"{self.what}: bytes hash to git oid {self._sha1.hexdigest()}, "
                                 f"expected {self.entry.oid}")
        return writer.sha256
