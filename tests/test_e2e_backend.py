"""The end-to-end suite runs on the backend --backend names: the servers it starts keep their
catalog and blobs where the option says, not in the data dir by default."""

from __future__ import annotations

import hashlib

import pytest
from backends import Backend, PgS3Backend
from conftest import Fixture
from helpers import Server, raw

from hubmirror.model.names import RepoRef, RepoType

pytestmark = pytest.mark.e2e


def test_the_server_and_the_imports_use_the_sessions_backend(server: Server, fixture_data: Fixture,
                                                             e2e_backend: Backend) -> None:
    data = fixture_data.data
    weights = hashlib.sha256(fixture_data.files["weights.bin"]).hexdigest()
    r = raw(server.url, "GET", "/acme/tiny/resolve/main/weights.bin")
    assert r.status == 200 and r.body == fixture_data.files["weights.bin"]
    assert raw(server.url, "GET", "/ready").status == 200
    store = e2e_backend.store(data)
    assert store.stat(weights) is not None
    catalog = e2e_backend.catalog(data)
    try:
        repo = catalog.get_repo(RepoRef(RepoType.MODEL, "acme/tiny"))
        assert repo is not None
        assert catalog.engine.dialect.name == ("postgresql" if isinstance(e2e_backend, PgS3Backend) else "sqlite")
    finally:
        catalog.close()
    sqlite = (data / "catalog.sqlite3").exists()
    on_disk = (data / "blobs" / "sha256" / weights[:2] / weights[2:4] / weights).exists()
    if isinstance(e2e_backend, PgS3Backend):
        # nothing of the catalog or the blobs on local disk: the server ran on PostgreSQL + S3
        assert not sqlite and not on_disk, sorted(p.name for p in data.iterdir())
        assert type(store).__name__ == "S3BlobStore"
        _, prefix = e2e_backend.place(data)
        key = f"{prefix}/sha256/{weights[:2]}/{weights[2:4]}/{weights}"
        head = e2e_backend.s3.client().head_object(Bucket=e2e_backend.s3.bucket, Key=key)
        assert head["ContentLength"] == len(fixture_data.files["weights.bin"])
    else:
        assert sqlite and on_disk and store.local_path(weights) is not None
