"""Where the end-to-end tests keep a hubmirror's catalog and blobs: the `--backend` option.

    --backend=local  (default) SQLite in the data dir and blobs under DATA/blobs
    --backend=pg-s3  a fresh PostgreSQL database and a fresh S3 prefix per data dir

Everything that stands up a hubmirror for a test asks the current backend, so that the switch is
made here and nowhere else:

* `helpers.Server` (a real `hubmirror serve`) and `helpers.hubmirror_env` (for `hubmirror import`,
  `sync`, `user`... run as subprocesses) add `env(data)`, the HUBMIRROR_* variables that point a
  process working on `data` at its database and bucket prefix;
* what a test does in-process (conftest's build_fixture imports, test_sync's run_sync, checks
  of the stored blobs) opens `catalog(data)` and `store(data)`.

A data dir gets its database and prefix the first time it is named and keeps them for the session,
so a server restarted on the same data dir, or a CLI run before it, sees the same catalog and
blobs. With pg-s3 the data dir still exists and holds what is local by nature: the spool, locks,
logs. The services come from tests/services.py (`postgres_server`, `s3_service`: throwaway ones,
or HUBMIRROR_TEST_DATABASE_URL / HUBMIRROR_TEST_S3); conftest.py installs the backend for the
session with `use()`.
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from hubmirror.catalog import Catalog
from hubmirror.config import S3Settings, Settings
from hubmirror.store import BlobStore, open_store

if TYPE_CHECKING:
    from services import PostgresServer, S3Service

BACKENDS = ("local", "pg-s3")


class Backend:
    """SQLite + local disk: what a data dir holds by default; nothing to add."""

    name = "local"

    def env(self, data: Path) -> dict[str, str]:
        """HUBMIRROR_* variables for a hubmirror process working on `data`."""
        return {}

    def settings(self, data: Path) -> Settings:
        return Settings(data=data, database_url=None, store_url=None)

    def catalog(self, data: Path) -> Catalog:
        """The catalog of `data`, migrated (the caller closes it)."""
        data.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(self.settings(data).catalog_url)
        catalog.migrate()
        return catalog

    def store(self, data: Path) -> BlobStore:
        """The blob store of `data`."""
        return open_store(self.settings(data))

    def close(self) -> None:
        pass


class PgS3Backend(Backend):
    """A PostgreSQL database and an S3 prefix of its own for every data dir."""

    name = "pg-s3"

    def __init__(self, postgres: PostgresServer, s3: S3Service) -> None:
        self.postgres = postgres
        self.s3 = s3
        self._places: dict[Path, tuple[str, str]] = {}  # data dir -> (database URL, prefix)
        self._n = itertools.count(1)
        self._run = f"e2e-{os.getpid()}-{secrets.token_hex(3)}"

    def place(self, data: Path) -> tuple[str, str]:
        """(database URL, bucket prefix) of `data`, made on first use."""
        key = data.resolve()
        if key not in self._places:
            url = self.postgres.create_database("e2e")
            self._places[key] = (url, f"{self._run}/{next(self._n)}-{key.name}")
        return self._places[key]

    def env(self, data: Path) -> dict[str, str]:
        url, prefix = self.place(data)
        return {"HUBMIRROR_DATABASE_URL": url, **self.s3.server_env(prefix)}

    def settings(self, data: Path) -> Settings:
        url, prefix = self.place(data)
        s3 = S3Settings(endpoint=self.s3.endpoint, region=self.s3.region, access_key_id=self.s3.access_key_id,
                        secret_access_key=self.s3.secret_access_key, addressing="path")  # type: ignore[arg-type]
        return Settings(data=data, database_url=url, store_url=self.s3.store_url(prefix), s3=s3)

    def close(self) -> None:
        """Drop the databases and empty the prefixes (they may live on servers that outlast us)."""
        client = self.s3.client()
        for url, _ in self._places.values():
            self.postgres.drop_database(url)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=f"{self._run}/")
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=self.s3.bucket, Delete={"Objects": keys, "Quiet": True})
        uploads = client.list_multipart_uploads(Bucket=self.s3.bucket, Prefix=f"{self._run}/").get("Uploads", [])
        for up in uploads:
            client.abort_multipart_upload(Bucket=self.s3.bucket, Key=up["Key"], UploadId=up["UploadId"])
        self._places.clear()


_current: Backend = Backend()


def current() -> Backend:
    """The backend of this session (local until conftest.py installs another)."""
    return _current


def use(backend: Backend) -> None:
    global _current
    _current = backend
