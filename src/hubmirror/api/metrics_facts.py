"""What /metrics reads now and then rather than counts: the catalog's declared mirrors (behind,
failing, last check and success), gone repos, repos by origin, pins and the pull-through cache, in
a handful of queries over small tables (never the entries of commits); and the blob store's totals,
by a walk of the store. `Every` computes such a value in a thread, again when asked for after its
interval; api/metrics.py turns them into gauges."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

import sqlalchemy as sa

from ..catalog import Catalog
from ..catalog import schema as t
from ..model.mirror import interval_seconds, next_run
from ..model.names import is_commit_sha
from ..store import BlobStore

log = logging.getLogger("hubmirror.metrics")

T = TypeVar("T")

FIRST_WAIT = 5.0  # the first scrape waits this long at most for a value
MAX_STREAK = 20  # failed sync runs in a row are counted up to this


class Every(Generic[T]):
    """A value computed in a thread, again when asked for more than `every` seconds after the last."""

    def __init__(self, every: float, compute: Callable[[], T], what: str) -> None:
        self.every = every
        self.compute = compute
        self.what = what
        self.value: T | None = None
        self._at = -1e18
        self._task: asyncio.Task[None] | None = None

    def due(self) -> bool:
        return self._task is None and time.monotonic() - self._at >= self.every

    async def _run(self) -> None:
        try:
            self.value = await asyncio.to_thread(self.compute)
        except Exception:  # the last value stays; said at each failed attempt
            log.warning("could not read %s for /metrics", self.what, exc_info=True)
        finally:
            self._at = time.monotonic()
            self._task = None

    def refresh(self) -> asyncio.Task[None] | None:
        if self.due():
            self._task = asyncio.create_task(self._run())
        return self._task

    async def first(self) -> None:
        """Wait (a little) for a first value; later ones are computed behind the scrapes."""
        task = self.refresh()
        if task is not None and self.value is None:
            await asyncio.wait([task], timeout=FIRST_WAIT)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _ts(d: datetime | None) -> float | None:
    return d.replace(tzinfo=UTC).timestamp() if d is not None else None


@dataclass
class MirrorFacts:
    repo_type: str
    repo_id: str
    state: str  # active | disabled | frozen
    schedule: float | None
    behind: bool
    failing: bool
    failed_runs: int
    last_check: float | None
    last_sync: float | None
    last_success: float | None


@dataclass
class CatalogFacts:
    mirrors: list[MirrorFacts] = field(default_factory=list)
    gone: list[tuple[str, str, float]] = field(default_factory=list)
    repos: dict[str, int] = field(default_factory=dict)
    pins: int = 0
    cache_blobs: int = 0
    cache_bytes: int = 0


def _schedule_seconds(schedule: str, now: datetime) -> float:
    secs = interval_seconds(schedule)
    if secs is not None:
        return float(secs)
    first = next_run(schedule, now)
    return (next_run(schedule, first) - first).total_seconds()


def _behind(upstream: dict[str, str], mirrored: dict[str, str]) -> bool:
    """Does a branch (or refs/pr/N) we mirror point elsewhere than the upstream's at the last
    check? Tags are promises (kept when the upstream moves them) and commits never move."""
    for rev, commit in upstream.items():
        if is_commit_sha(rev) or f"refs/tags/{rev}" in mirrored:
            continue
        ours = mirrored.get(f"refs/heads/{rev}") or mirrored.get(rev)
        if ours != commit:
            return True
    return False


def read_catalog(catalog: Catalog, seen_success: dict[tuple[str, str], float]) -> CatalogFacts:
    """What the catalog says, in a handful of queries over small tables: mirrors, their refs,
    gone repos, repos by origin, pins, the blob_access aggregate, and the latest sync runs of
    failing mirrors only (by the runs' index). `seen_success` remembers, across reads, when each
    mirror was last seen up to date (the catalog keeps the time of the last check only)."""
    out = CatalogFacts()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = catalog.list_mirrors()
    r, f, m, g = t.repos.c, t.refs.c, t.mirrors.c, t.repo_gone.c
    with catalog.engine.connect() as c:
        mirrored: dict[tuple[str, str], dict[str, str]] = {}
        q = (sa.select(r.repo_type, r.repo_id, f.name, f.commit)
             .select_from(t.refs.join(t.repos, r.id == f.repo)
                          .join(t.mirrors, sa.and_(m.repo_type == r.repo_type, m.repo_id == r.repo_id))))
        for ref in c.execute(q):
            mirrored.setdefault((ref.repo_type, ref.repo_id), {})[ref.name] = ref.commit
        for gone in c.execute(sa.select(r.repo_type, r.repo_id, g.since).select_from(t.repo_gone.join(t.repos, r.id == g.repo))):
            out.gone.append((gone.repo_type, gone.repo_id, _ts(gone.since) or 0.0))
        out.repos = {str(o): int(n) for o, n in c.execute(sa.select(r.origin, sa.func.count()).group_by(r.origin))}
        out.pins = int(c.execute(sa.select(sa.func.count()).select_from(t.pins)).scalar() or 0)
        b = t.blob_access.c
        blobs, nbytes = c.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(b.size), 0))
                                  .where(b.proxied == sa.true())).one()
        out.cache_blobs, out.cache_bytes = int(blobs), int(nbytes)
        for row in rows:
            spec = row.spec
            key = (spec.type.value, spec.repo)
            state = "frozen" if spec.frozen else "active" if spec.enabled else "disabled"
            behind = _behind(row.upstream, mirrored.get(key, {}))
            failing = row.last_error is not None
            streak = 0
            if failing:
                s = t.sync_runs.c
                statuses = c.execute(sa.select(s.status).where(s.repo_type == key[0], s.repo_id == key[1])
                                     .order_by(s.id.desc()).limit(MAX_STREAK)).scalars()
                for st in statuses:
                    if st == "running":
                        continue
                    if st not in ("failed", "interrupted"):
                        break
                    streak += 1
            check, sync = _ts(row.last_check_at), _ts(row.last_sync_at)
            # up to date at its last check if that found nothing to do or synced; else at its last sync
            known = [sync, seen_success.get(key)]
            if not failing and not behind:
                known.append(check)
            success = max((x for x in known if x is not None), default=None)
            if success is not None:
                seen_success[key] = success
            out.mirrors.append(MirrorFacts(
                key[0], key[1], state, _schedule_seconds(spec.schedule, now) if state == "active" else None,
                behind, failing, streak, check, sync, success))
    return out


@dataclass
class StoreFacts:
    blobs: int
    bytes: int


def read_store(store: BlobStore) -> StoreFacts:
    n = size = 0
    for info in store.list():
        n += 1
        size += info.size
    return StoreFacts(n, size)
