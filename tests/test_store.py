"""Blob store conformance: every driver must pass these (parametrise `store` over drivers)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubmirror.errors import DigestMismatch, InvalidInput, SizeMismatch
from hubmirror.store import BlobStore, LocalBlobStore


@pytest.fixture(params=["local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")


def put(store: BlobStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    with store.writer() as w:
        w.write(data)
        w.commit(sha, len(data))
    return sha


def test_write_commit_read_stat_list_delete(store: BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    sha = put(store, data)
    info = store.stat(sha)
    assert info is not None and info.size == len(data)
    assert b"".join(store.read(sha)) == data
    assert b"".join(store.read(sha, 10, 20)) == data[10:20]
    assert b"".join(store.read(sha, len(data) - 3)) == data[-3:]
    assert [b.sha256 for b in store.list()] == [sha]
    assert store.delete(sha) is True
    assert store.stat(sha) is None and store.delete(sha) is False


def test_digest_mismatch_is_never_published(store: BlobStore) -> None:
    data = b"hello"
    wrong = hashlib.sha256(b"hellp").hexdigest()
    w = store.writer()
    w.write(data)
    with pytest.raises(DigestMismatch):
        w.commit(wrong, len(data))
    assert store.stat(wrong) is None
    assert [b.sha256 for b in store.list()] == []


def test_size_mismatch_is_never_published(store: BlobStore) -> None:
    data = b"hello"
    sha = hashlib.sha256(data).hexdigest()
    w = store.writer()
    w.write(data[:3])
    with pytest.raises(SizeMismatch):
        w.commit(sha, len(data))
    assert store.stat(sha) is None


def test_cancel_leaves_nothing_and_is_idempotent(store: BlobStore) -> None:
    w = store.writer()
    w.write(b"partial")
    w.cancel()
    w.cancel()
    assert [b.sha256 for b in store.list()] == []
    assert store.sweep() == 0


def test_publishing_an_existing_blob_is_fine(store: BlobStore) -> None:
    a = put(store, b"same")
    b = put(store, b"same")
    assert a == b and [b.sha256 for b in store.list()] == [a]


def test_concurrent_writers_of_the_same_blob(store: BlobStore) -> None:
    data = os.urandom(1 << 20)
    errors: list[BaseException] = []

    def go() -> None:
        try:
            put(store, data)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert b"".join(store.read(hashlib.sha256(data).hexdigest())) == data


def test_bad_keys_are_refused(store: BlobStore) -> None:
    for key in ["../../etc/passwd", "A" * 64, "abc", "g" * 64, ""]:
        with pytest.raises(InvalidInput):
            store.stat(key)
        with pytest.raises(InvalidInput):
            store.delete(key)


def test_kill_9_mid_write_leaves_only_a_partial_that_sweep_removes(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    code = f"""
import os, sys
from hubmirror.store import LocalBlobStore
s = LocalBlobStore({str(root)!r})
w = s.writer()
w.write(b"x" * 1000)
print("written", flush=True)
sys.stdin.read()
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"written"
    store = LocalBlobStore(root)
    assert store.sweep() == 0  # the writer is alive: its file is left alone
    p.kill()
    p.wait()
    assert [b.sha256 for b in store.list()] == []
    assert store.sweep() == 1
    assert list((root / "tmp").iterdir()) == []


def test_disk_full_aborts_cleanly(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    store = LocalBlobStore(tmp_path / "blobs")
    w = store.writer()
    # swap the file under the writer for /dev/full: every write fails with ENOSPC
    w._fh.close()  # type: ignore[attr-defined]
    w._fh = open("/dev/full", "wb", buffering=0)  # type: ignore[attr-defined]  # noqa: SIM115
    from hubmirror.errors import InsufficientStorage

    with pytest.raises(InsufficientStorage, match="disk full"):  # 507 for clients, not a 500
        w.write(b"x" * 4096)
    # a second write (a fill's queued chunk) says the same, not "write after commit or cancel"
    with pytest.raises(InsufficientStorage, match="disk full"):
        w.write(b"x" * 4096)
    assert w._fh.closed  # type: ignore[attr-defined]  # released at once, not when gc runs
    assert [b.sha256 for b in store.list()] == []
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_publishing_without_hard_links_still_never_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a filesystem without hard links (SMB, some FUSE mounts) a blob is published by a
    no-replace rename; an existing blob is kept and the writer learns it did not create it."""
    import errno
    import hashlib
    import os

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"no hard links here" * 100
    sha = hashlib.sha256(data).hexdigest()
    with store.writer() as w:
        w.write(data)
        assert w.commit(sha, len(data)).created is True
    with store.writer() as w:
        w.write(data)
        assert w.commit(sha, len(data)).created is False
    assert b"".join(store.read(sha)) == data
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
