"""Blob store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW, SeaweedFS...).

Layout in the bucket:

```
{prefix}/sha256/ab/cd/abcd...ef      published blobs, named by their sha256
```

A write goes to a local spool file (readable while it grows: pull-through streams from it) and
up as a multipart upload, which S3 keeps invisible until it is completed; `commit` completes it
only once sha256 and size match, with If-None-Match: * (s3_write.py). Nothing partial is ever
visible. Reads are ranged GETs, resumed if cut; `url` presigns a GET for redirects.

A crash leaves a spool file (found by `abandoned`, removed by `sweep`) and perhaps an unfinished
upload, which `sweep` aborts once it is older than `upload_max_age` (a day).

boto3 is synchronous and thread-safe: callers run these methods in threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BlobNotFound, HubMirrorError, StoreError
from . import spool
from .base import SHA256_RE, BlobInfo, BlobStore, BlobWriter, check_sha256
from .s3_write import MIN_PART, S3_ERRORS, S3Writer, code_of, describe, status_of
from .spool import os_error

__all__ = ["MIN_PART", "S3BlobStore"]

log = logging.getLogger("hubmirror.store")

_UPLOAD_THREADS = 16  # parts in flight at once for the whole store
_READ_RETRIES = 3  # a GET cut mid-body is resumed from where it stopped, this many times


def content_disposition(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing: str = "path",
        part_size: int = 16 << 20,
        spool_dir: Path,
        presign_expires: int = 300,
        public_endpoint: str | None = None,
        upload_max_age: float = 86400.0,
    ) -> None:
        """`endpoint`: e.g. http://minio:9000 (None: AWS). Credentials and region left None come
        from the standard AWS environment variables and files. `public_endpoint`: where clients
        reach the same bucket, if not at `endpoint` (presigned URLs name it)."""
        if not bucket:
            raise StoreError("an S3 store needs a bucket")
        if part_size < MIN_PART:
            raise StoreError(f"S3 part size {part_size} is below S3's minimum of {MIN_PART} bytes")
        if addressing not in ("path", "virtual"):
            raise StoreError(f"S3 addressing must be 'path' or 'virtual', not {addressing!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.endpoint = endpoint
        self.part_size = int(part_size)
        self.presign_expires = presign_expires
        self.upload_max_age = upload_max_age
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        region_name=region)
        region = session.region_name or "us-east-1"  # what S3-compatible servers expect when unset
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=_UPLOAD_THREADS + 32,
            # boto3 >= 1.36 adds CRC checksums that many S3-compatible servers refuse; transfers are
            # verified anyway (SigV4 signs the payload over http, TLS protects https, and the blob's
            # sha256 is checked before upload)
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._s3 = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        self._presigner = self._s3 if not public_endpoint else session.client(
            "s3", endpoint_url=public_endpoint, region_name=region, config=config)
        self._pool = ThreadPoolExecutor(max_workers=_UPLOAD_THREADS, thread_name_prefix="s3-part")  # parts, aborts
        self._conditional = True  # If-None-Match on writes, until the server says it has none

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint or 'AWS'})"

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self._base}sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def _fail(self, e: BaseException, what: str) -> HubMirrorError:
        if isinstance(e, HubMirrorError):
            return e
        if isinstance(e, OSError):  # the spool's disk
            return os_error(e, what)
        return StoreError(f"cannot {what} in s3://{self.bucket}/{self.prefix}: {describe(e)}")

    # -- setup ------------------------------------------------------------------------------

    def check(self) -> None:
        """That the bucket exists and these credentials reach it (at start: operators create
        buckets, this store never does)."""
        where = self.endpoint or "AWS"
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if status_of(e) == 404:
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist at {where}: create it first "
                                 "(hubmirror does not create buckets)") from None
            if status_of(e) in (401, 403):
                raise StoreError(f"S3 bucket {self.bucket!r} at {where}: access denied; check s3.access_key_id "
                                 "and s3.secret_access_key (or the AWS_* environment)") from None
            raise StoreError(f"S3 bucket {self.bucket!r} at {where}: {describe(e)}") from None
        except BotoCoreError as e:
            raise StoreError(f"cannot reach S3 bucket {self.bucket!r} at {where}: {describe(e)}") from None

    def close(self) -> None:
        """Wait for background aborts and stop the upload threads."""
        self._pool.shutdown(wait=True)

    # -- reads ------------------------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if status_of(e) == 404:
                return False
            raise
        return True

    def stat(self, sha256: str) -> BlobInfo | None:
        key = self._key(sha256)
        try:
            r = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if status_of(e) == 404:
                return None
            raise self._fail(e, f"stat blob {sha256}") from e
        except BotoCoreError as e:
            raise self._fail(e, f"stat blob {sha256}") from e
        return BlobInfo(sha256, int(r["ContentLength"]))

    def read(self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self._read(sha256, self._key(sha256), start, end, chunk_size)

    def _read(self, sha256: str, key: str, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
        if end is not None and end <= start:  # nothing to send, but a missing blob is still missing
            if self.stat(sha256) is None:
                raise BlobNotFound(f"blob {sha256} is not in the store")
            return
        pos, cuts = start, 0
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if pos > 0 or end is not None:
                args["Range"] = f"bytes={pos}-{'' if end is None else end - 1}"
            try:
                body = self._s3.get_object(**args)["Body"]
            except ClientError as e:
                if status_of(e) == 404 and code_of(e) != "NoSuchBucket":
                    raise BlobNotFound(f"blob {sha256} is not in the store") from None
                if status_of(e) == 416 or code_of(e) == "InvalidRange":
                    return  # starts at or past the end (or an empty blob): nothing, as from a file
                raise self._fail(e, f"read blob {sha256}") from e
            except BotoCoreError as e:
                raise self._fail(e, f"read blob {sha256}") from e
            try:
                while end is None or pos < end:
                    try:
                        data = body.read(chunk_size if end is None else min(chunk_size, end - pos))
                    except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as e:
                        cuts += 1
                        if cuts > _READ_RETRIES:
                            raise self._fail(e, f"read blob {sha256}") from e
                        log.info("reading s3 blob %s was cut at byte %d (%s); resuming", sha256, pos, e)
                        break
                    if not data:
                        return
                    pos += len(data)
                    yield data
                else:
                    return
            finally:
                body.close()

    def list(self) -> Iterator[BlobInfo]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self._base}sha256/")
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if SHA256_RE.match(name) and obj["Key"] == self._key(name):
                        yield BlobInfo(name, int(obj["Size"]))
        except S3_ERRORS as e:
            raise self._fail(e, "list blobs") from e

    def url(self, sha256: str, *, expires: int | None = None, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(sha256)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        try:
            return str(self._presigner.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=int(expires or self.presign_expires)))
        except BotoCoreError as e:  # no credentials found
            raise self._fail(e, f"sign a URL for blob {sha256}") from e

    # -- writes -----------------------------------------------------------------------------

    def writer(self, sha256: str | None = None) -> BlobWriter:
        if sha256 is not None:
            check_sha256(sha256)
        return S3Writer(self, sha256)

    def delete(self, sha256: str) -> bool:
        key = self._key(sha256)
        try:
            if not self._exists(key):
                return False
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except S3_ERRORS as e:
            raise self._fail(e, f"delete blob {sha256}") from e
        return True

    # -- crash leftovers --------------------------------------------------------------------

    def follow(self, name: str) -> int | None:
        return spool.follow(self.spool_dir, name)

    def abandoned(self, name: str) -> Path | None:
        return spool.abandoned(self.spool_dir, name)

    def sweep(self) -> int:
        """Remove the spool files of dead writers and abort uploads older than `upload_max_age`."""
        n = spool.sweep(self.spool_dir)
        cutoff = datetime.now(UTC) - timedelta(seconds=self.upload_max_age)
        try:
            pages = self._s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self._base}sha256/")
            for page in pages:
                for up in page.get("Uploads", ()):
                    if up["Initiated"] > cutoff:
                        continue
                    try:
                        self._s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    except ClientError as e:
                        if code_of(e) != "NoSuchUpload":
                            raise
                    n += 1
        except S3_ERRORS as e:
            log.warning("could not clean up unfinished uploads in s3://%s/%s: %s", self.bucket, self.prefix,
                        describe(e))
        return n
