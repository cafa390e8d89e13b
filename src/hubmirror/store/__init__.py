"""Content-addressed blob storage. See base.py for the interface, local.py for the disk layout,
s3.py for object storage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .base import BlobInfo, BlobStore, BlobWriter
from .local import LocalBlobStore

if TYPE_CHECKING:  # only the type: the store layer does not import the config layer
    from ..config import Settings

__all__ = ["BlobInfo", "BlobStore", "BlobWriter", "LocalBlobStore", "open_store"]


def open_store(settings: Settings) -> BlobStore:
    """The store `settings.store_url` names: a folder (default DATA/blobs) or `s3://bucket/prefix`
    with the [s3] settings. An S3 bucket must exist (StoreError naming it, if not): operators
    create buckets. Blocks on the network for S3: call it at start, before serving."""
    url = settings.store_url
    if not url:
        return LocalBlobStore(settings.blob_dir)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from .s3 import S3BlobStore  # boto3 is imported only by those who use it

        s3 = settings.s3
        store = S3BlobStore(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint=s3.endpoint,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
            addressing=s3.addressing,
            part_size=int(s3.part_size),
            spool_dir=settings.data / "spool",
            presign_expires=s3.presign_expires,
            public_endpoint=s3.public_endpoint,
        )
        store.check()
        return store
    if parts.scheme == "file":
        return LocalBlobStore(Path(unquote(parts.path)))
    return LocalBlobStore(Path(url))
