"""Scrub: re-hash every stored blob at a bounded rate, report the corrupt ones, remove them so
they are never served, and fetch them again from the upstream when a repo there still has them.
Then report every catalog entry whose recorded size disagrees with its stored blob (it would be
served with a wrong Content-Length): nothing can repair that but re-recording the commit."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import Catalog
from ..coord.base import Coordinator
from ..coord.local import as_coordinator
from ..errors import BlobNotFound, HubMirrorError
from ..hub import HubClient
from ..store import BlobStore, BlobWriter

log = logging.getLogger("hubmirror.scrub")


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: dict[str, str] = field(default_factory=dict)
    # entries whose recorded size is not their blob's: {sha256, recorded, stored, repo, commit, path}
    size_mismatch: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"checked": self.checked, "bytes": self.bytes, "corrupt": self.corrupt, "repaired": self.repaired,
                "unrepaired": self.unrepaired, "size_mismatch": self.size_mismatch}


def _hash(store: BlobStore, sha: str, rate: float) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    for chunk in store.read(sha):
        h.update(chunk)
        n += len(chunk)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    return h.hexdigest(), n


def _writing_to(writer: BlobWriter) -> Callable[[bytes], Awaitable[None]]:
    """An async `write` for HubClient.download that feeds `writer` off the event loop."""

    async def write(chunk: bytes) -> None:
        await asyncio.to_thread(writer.write, chunk)

    return write


async def scrub(
    catalog: Catalog, store: BlobStore, data: Coordinator | Path, client: HubClient | None, *, rate: float,
    repair: bool, progress: Callable[[int, int], None] | None = None,
) -> ScrubReport:
    """`progress(blobs, bytes)` after each blob (a bar; the totals are known from `store.list()`)."""
    report = ScrubReport()
    sizes: dict[str, int] = {}  # sound blobs -> their size
    for sha in [b.sha256 for b in store.list()]:
        try:
            actual, n = await asyncio.to_thread(_hash, store, sha, rate)
        except BlobNotFound:
            continue  # deleted meanwhile (gc, eviction)
        report.checked += 1
        report.bytes += n
        if progress is not None:
            progress(1, n)
        if actual == sha:
            sizes[sha] = n
            continue
        log.error("blob %s is corrupt (hashes to %s); removing it", sha, actual)
        report.corrupt.append(sha)
        await asyncio.to_thread(store.delete, sha)
        await asyncio.to_thread(catalog.audit, "scrub-corrupt", None, sha256=sha, actual=actual)
        await asyncio.to_thread(catalog.emit_event, "scrub-corrupt", None, sha256=sha, actual=actual)  # notify
        if not repair or client is None:
            report.unrepaired[sha] = "repair not requested" if not repair else "no upstream"
            continue
        where = await asyncio.to_thread(catalog.where_is, sha)
        if where is None:
            report.unrepaired[sha] = "no catalog entry references it"
            continue
        repo_pk, commit, path, _lfs = where
        repo = await asyncio.to_thread(catalog._repo_by_pk, repo_pk)
        entry = await asyncio.to_thread(catalog.get_entry, repo, commit, path)
        if entry is None:
            report.unrepaired[sha] = "no catalog entry references it"
            continue
        if repo.origin == "local":  # hosted here: the mirror holds the only copy
            report.unrepaired[sha] = (
                f"hosted content ({repo.ref}@{commit} {path!r}), no upstream has it: restore it by importing a "
                f"folder that holds that file again (hubmirror import {repo.ref.repo_id} FOLDER); until then "
                f"it answers 503 BlobMissing")
            await asyncio.to_thread(catalog.audit, "scrub-lost", repo.ref, sha256=sha, path=path, commit=commit)
            continue
        size = entry.size
        try:
            with as_coordinator(data).gc_lock():  # type: ignore[attr-defined]
                writer = await asyncio.to_thread(store.writer, sha)
                try:
                    await client.download(repo.ref, commit, path, _writing_to(writer), size)
                    await asyncio.to_thread(writer.commit, sha, size)
                except BaseException:
                    writer.cancel()
                    raise
            report.repaired.append(sha)
            await asyncio.to_thread(catalog.audit, "scrub-repaired", repo.ref, sha256=sha, path=path, commit=commit)
        except HubMirrorError as e:
            report.unrepaired[sha] = e.message
    report.size_mismatch = await asyncio.to_thread(_size_mismatches, catalog, sizes)
    return report


def _size_mismatches(catalog: Catalog, sizes: dict[str, int]) -> list[dict[str, object]]:
    """Entries whose recorded size is not the size of their (sound) stored blob, one per (sha256, size)."""
    found: list[tuple[str, int]] = [(sha, recorded) for sha, recorded in catalog.entry_blob_sizes()
                                    if sha in sizes and sizes[sha] != recorded]
    out: list[dict[str, object]] = []
    for sha, recorded in found:
        where = catalog.entry_with_size(sha, recorded)  # one such entry, to name in the report
        log.error("catalog entries record %d bytes for blob %s, which has %d", recorded, sha, sizes[sha])
        out.append({"sha256": sha, "recorded": recorded, "stored": sizes[sha],
                    "repo": str(where[0]) if where else None, "commit": where[1] if where else None,
                    "path": where[2] if where else None})
    return out
