"""Content-addressed blob storage. See base.py for the interface, local.py for the disk layout."""

from .base import BlobInfo, BlobStore, BlobWriter
from .local import LocalBlobStore

__all__ = ["BlobInfo", "BlobStore", "BlobWriter", "LocalBlobStore"]
