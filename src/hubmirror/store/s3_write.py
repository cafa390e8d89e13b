"""Writes to the S3 store (s3.py): the spool, its multipart upload, conditional publication.

A writer spools every byte to a local file (readable while it grows: pull-through streams from it)
and hashes it. With the expected sha256 known (`writer(sha256=...)`), full parts go up on the
store's threads while the bytes are written, at most `_PENDING_PARTS` of one writer at once (a
slow bucket slows the writer instead of leaving the whole blob for commit); parts are read back
from the spool, never held in memory. `commit` checks digest and size, then completes the upload
(or sends the spool: one PutObject up to a part) with If-None-Match: *, so that of two writers of
one blob one learns it did not create it. Anything that fails aborts the upload: an unfinished
multipart upload is invisible, so nothing partial is ever published.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_all
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import DigestMismatch, SizeMismatch, StoreError
from . import spool
from .base import BlobInfo, check_sha256

if TYPE_CHECKING:
    from .s3 import S3BlobStore

log = logging.getLogger("hubmirror.store")

MIN_PART = 5 << 20  # S3's smallest part (all but the last)
_MAX_PART = 5 << 30  # and its largest
_PENDING_PARTS = 4  # parts of one writer queued or in flight at once

S3_ERRORS = (ClientError, BotoCoreError)


def part_size(base: int, number: int) -> int:
    """The size of part `number` (from 1): `base`, doubled every 2,500 parts, so that S3's 10,000
    parts of 16 MiB hold 600 GiB (at most 5 GiB a part)."""
    return min(base << ((number - 1) // 2500), _MAX_PART)


def status_of(e: BaseException) -> int:
    if isinstance(e, ClientError):
        return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def code_of(e: BaseException) -> str:
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code") or "")
    return ""


def describe(e: BaseException) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code') or status_of(e)}: {err.get('Message') or 'no message'}"
    return str(e) or e.__class__.__name__


class _Slice(io.RawIOBase):
    """Bytes [offset, offset + length) of a file as a seekable stream: a part's body, read from the
    spool as it is sent (botocore seeks back to retry). Owns `fd` (a duplicate) and closes it."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._length - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._offset + self._pos)
        if len(data) < n:
            raise StoreError("spool file shorter than written")
        buf[:n] = data
        self._pos += n
        return n

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Upload:
    """One multipart upload: its parts go up on the store's threads, at most _PENDING_PARTS at
    once for this upload (the writer waits for a free slot)."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self.key = key
        self.id: str = store._s3.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
        self.next_number = 1
        self.failed: BaseException | None = None
        self._slots = threading.BoundedSemaphore(_PENDING_PARTS)
        self._futures: list[Future[dict[str, Any]]] = []
        self._aborted = False

    def submit(self, fd: int, offset: int, length: int) -> None:
        """Send bytes [offset, offset + length) of the spool as the next part. Once a part failed
        or the upload was aborted, nothing more is sent (commit then sends the spool again)."""
        number = self.next_number
        self.next_number += 1
        if self.failed is not None or self._aborted:
            return
        self._slots.acquire()  # a bucket slower than the writes slows the writer
        if self._aborted:  # meanwhile
            self._slots.release()
            return
        try:
            body = _Slice(os.dup(fd), offset, length)
        except OSError:
            self._slots.release()
            raise
        try:
            fut = self._store._pool.submit(self._put, number, body)
        except RuntimeError as e:  # the store was closed
            body.release()
            self._slots.release()
            self.failed = e
            return

        def done(f: Future[dict[str, Any]]) -> None:
            self._slots.release()
            if f.cancelled():  # never ran: its descriptor is still open
                body.release()

        fut.add_done_callback(done)
        self._futures.append(fut)

    def _put(self, number: int, body: _Slice) -> dict[str, Any]:
        try:
            if self._aborted:
                raise StoreError("upload aborted")
            r = self._store._s3.upload_part(Bucket=self._store.bucket, Key=self.key, UploadId=self.id,
                                            PartNumber=number, Body=body, ContentLength=len(body))
            return {"PartNumber": number, "ETag": r["ETag"]}
        except BaseException as e:
            if self.failed is None:
                self.failed = e
            raise
        finally:
            body.release()

    def parts(self) -> list[dict[str, Any]] | None:
        """Wait for every part sent; their list for completion, or None if one failed."""
        wait_all(self._futures)
        if self.failed is not None:
            log.warning("a part of s3://%s/%s failed (%s); sending it again whole",
                        self._store.bucket, self.key, describe(self.failed))
            return None
        return [f.result() for f in self._futures]

    def complete(self, parts: list[dict[str, Any]]) -> bool:
        """Publish; True if this upload created the object, False if it was there already."""
        s3 = self._store._s3
        return if_absent(
            self._store,
            lambda cond: s3.complete_multipart_upload(Bucket=self._store.bucket, Key=self.key, UploadId=self.id,
                                                      MultipartUpload={"Parts": parts}, **cond),
            self.key, on_lost=self._abort_now)

    def abort(self, *, wait: bool) -> None:
        """Abort, once the parts in flight have ended (a part that lands after an abort would
        leave its upload behind). `wait=False`: return at once, abort on the store's threads."""
        if self._aborted:
            return
        self._aborted = True
        for f in self._futures:
            f.cancel()
        running = [f for f in self._futures if not f.done()]
        if wait:
            wait_all(running)
            self._abort_now()
            return
        if not running:
            try:
                self._store._pool.submit(self._abort_now)
            except RuntimeError:
                self._abort_now()
            return
        left = [len(running)]
        lock = threading.Lock()

        def one_done(_f: object) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._abort_now()

        for f in running:
            f.add_done_callback(one_done)

    def _abort_now(self) -> None:
        try:
            self._store._s3.abort_multipart_upload(Bucket=self._store.bucket, Key=self.key, UploadId=self.id)
        except ClientError as e:
            if code_of(e) != "NoSuchUpload":
                log.warning("could not abort upload %s of s3://%s/%s: %s (sweep removes it after a day)",
                            self.id, self._store.bucket, self.key, describe(e))
        except BotoCoreError as e:
            log.warning("could not abort upload %s of s3://%s/%s: %s (sweep removes it after a day)",
                        self.id, self._store.bucket, self.key, describe(e))


class S3Writer(spool.SpoolWriter):
    """A write to the S3 store; see the module docstring."""

    _doing = "spool a blob"

    def __init__(self, store: S3BlobStore, expected: str | None) -> None:
        self._store = store
        self._expected = expected
        super().__init__(store.spool_dir)
        self._rfd = os.open(self._path, os.O_RDONLY)  # parts are read through it (each a duplicate)
        self._sent = 0  # bytes handed to the upload as parts
        self._upload: _Upload | None = None

    def _written(self) -> None:
        if self._expected is not None:
            self._stream_parts()

    def _stream_parts(self) -> None:
        """Hand every full part written so far to the upload (started at the first one). If that
        fails, the write goes on: commit sends the spool instead."""
        if self._upload is None and self._size < self._store.part_size:
            return
        try:
            if self._upload is None:
                self._upload = _Upload(self._store, self._store._key(self._expected or ""))
            self._send(self._upload, final=False)
        except (*S3_ERRORS, OSError) as e:
            log.warning("cannot upload to s3://%s while writing (%s); the blob goes up at commit",
                        self._store.bucket, describe(e))
            self._expected = None
            if self._upload is not None:
                self._upload.abort(wait=False)
                self._upload = None

    def _send(self, upload: _Upload, *, final: bool) -> None:
        while True:
            length = part_size(self._store.part_size, upload.next_number)
            left = self._size - self._sent
            if left >= length or (final and left > 0):
                length = min(length, left)
                upload.submit(self._rfd, self._sent, length)
                self._sent += length
            else:
                return

    def commit(self, sha256: str, size: int) -> BlobInfo:
        with self._lock:
            return self._commit(sha256, size)

    def _commit(self, sha256: str, size: int) -> BlobInfo:
        check_sha256(sha256)
        if self._done:
            raise StoreError("commit after commit or cancel")
        if self._size != size:
            self._discard(wait=True)
            raise SizeMismatch(f"blob {sha256}: expected {size} bytes, got {self._size}")
        actual = self._hash.hexdigest()
        if actual != sha256:
            self._discard(wait=True)
            raise DigestMismatch(f"blob {sha256}: content hashes to {actual}")
        try:
            created = self._publish(self._store._key(sha256), size)
        except (*S3_ERRORS, OSError) as e:
            self._discard(wait=True)
            raise self._store._fail(e, f"publish blob {sha256}") from e
        except BaseException:
            self._discard(wait=True)
            raise
        self._done = True
        self._close()
        return BlobInfo(sha256, size, created)

    def _publish(self, key: str, size: int) -> bool:
        store = self._store
        upload = self._upload
        if upload is not None and upload.key != key:  # the hint was wrong: that upload is not this blob
            upload.abort(wait=False)
            upload = self._upload = None
        if store._exists(key):
            if upload is not None:
                upload.abort(wait=True)
                self._upload = None
            return False
        if upload is not None:
            self._send(upload, final=True)
            parts = upload.parts()
            if parts is not None:
                created = upload.complete(parts)
                self._upload = None
                return created
            upload.abort(wait=True)  # a part failed: send it all again, from the spool
            self._upload = None
        if size <= store.part_size:
            return put_spool(store, key, self._rfd, size)
        upload = self._upload = _Upload(store, key)
        self._sent = 0
        self._send(upload, final=True)
        parts = upload.parts()
        if parts is None:
            assert upload.failed is not None
            raise upload.failed
        created = upload.complete(parts)
        self._upload = None
        return created

    def cancel(self) -> None:
        with self._lock:
            self._discard(wait=False)

    def _discard(self, *, wait: bool) -> None:
        """Abort the upload (`wait=False`: in the background) and delete the spool."""
        if self._done:
            return
        self._done = True
        self._hash.hexdigest()  # stops the hashing thread
        upload, self._upload = self._upload, None
        try:
            if upload is not None:
                upload.abort(wait=wait)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self._fh.close()
            os.close(self._rfd)
        finally:
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass


def if_absent(store: S3BlobStore, call: Callable[[dict[str, str]], Any], key: str, *,
              on_lost: Callable[[], None] | None = None) -> bool:
    """Run a write that creates `key` with If-None-Match: *; True if it created the object,
    False if the object was there (this write's upload, if any, is then aborted by `on_lost`).
    A server without conditional writes is asked again without, once and for all."""
    try:
        call({"IfNoneMatch": "*"} if store._conditional else {})
        return True
    except ClientError as e:
        status, code = status_of(e), code_of(e)
        if status == 412 or code == "PreconditionFailed":
            if on_lost is not None:
                on_lost()
            return False
        if status == 409 or code == "ConditionalRequestConflict":  # a concurrent writer of it
            if store._exists(key):
                if on_lost is not None:
                    on_lost()
                return False
            raise
        if code == "NoSuchUpload" and store._exists(key):  # a retry of a completion that went through
            return False
        if store._conditional and (status == 501 or code == "NotImplemented"):
            log.warning("s3 server at %s has no conditional writes: two writers of one blob may both "
                        "report creating it", store.endpoint or "AWS")
            store._conditional = False
            return if_absent(store, call, key, on_lost=on_lost)
        raise


def put_spool(store: S3BlobStore, key: str, fd: int, size: int) -> bool:
    """One PutObject of the spool (a blob of at most one part)."""
    body = _Slice(os.dup(fd), 0, size)
    try:
        return if_absent(
            store, lambda cond: store._s3.put_object(Bucket=store.bucket, Key=key, Body=body, ContentLength=size, **cond),
            key)
    finally:
        body.release()
