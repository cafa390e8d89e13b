"""Declared mirrors inside the server: the scheduler, webhook and on-demand triggers, and
the cheap "is there an update?" check."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ..catalog import Catalog, MirrorRow
from ..catalog.schema import utcnow
from ..coord.base import Coordinator
from ..errors import HubMirrorError, RepoNotFound, SyncBusy
from ..hub import HubClient
from ..model.entries import hub_time
from ..model.mirror import MirrorSpec, interval_seconds, next_run
from ..model.names import RepoRef
from .engine import Syncer

log = logging.getLogger("hubmirror.scheduler")


def jitter(spec: MirrorSpec) -> timedelta:
    """Spread mirrors over up to 10% of their interval (at most 5 minutes) so 500 do not fire at once."""
    secs = interval_seconds(spec.schedule) or 3600
    return timedelta(seconds=random.uniform(0, min(secs * 0.1, 300)))


class MirrorService:
    def __init__(
        self,
        catalog: Catalog,
        syncer: Syncer,
        client: HubClient,
        *,
        max_concurrent: int = 2,
        tick: float = 5.0,
        on_change: Callable[[RepoRef], None] | None = None,
        coord: Coordinator | None = None,
        lease_ttl: float = 15.0,
    ) -> None:
        self.coord = coord  # None: this process alone fires schedules (tests)
        self.lease_ttl = lease_ttl
        self.catalog = catalog
        self.syncer = syncer
        self.client = client
        self.tick_seconds = tick
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: dict[RepoRef, asyncio.Task[Any]] = {}
        self._again: set[RepoRef] = set()
        self._task: asyncio.Task[None] | None = None
        self.on_change = on_change
        self.on_checked: Callable[[RepoRef, str, float], None] | None = None  # (ref, result, seconds): metrics

    def load_config(self, mirrors: list[MirrorSpec]) -> None:
        for spec in mirrors:
            self.catalog.upsert_mirror(spec, "config")
        self.catalog.prune_config_mirrors({m.ref for m in mirrors})

    # -- scheduler --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hubmirror-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._running.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        """Tick while this process holds the scheduler lease: of all the workers and replicas
        sharing the catalog, one fires the schedules (another takes over within the lease's time
        to live if it dies). Manual, webhook and API triggers run wherever they arrive."""
        lease: Any = None
        ttl = max(self.lease_ttl, self.tick_seconds * 3)
        try:
            while True:
                try:
                    if lease is not None and not await asyncio.to_thread(lease.renew):
                        log.warning("scheduler lease lost: another process fires the schedules now")
                        lease = None
                    if lease is None and self.coord is not None:
                        lease = await asyncio.to_thread(self.coord.lease, "scheduler", ttl, "")
                        if lease is not None:
                            log.info("this process fires the mirror schedules (lease token %s)", lease.token)
                    if lease is not None or self.coord is None:
                        await self.tick()
                except Exception:
                    log.exception("scheduler tick failed")
                await asyncio.sleep(self.tick_seconds)
        finally:
            if lease is not None:
                try:
                    lease.release()
                except Exception:  # noqa: BLE001 - it lapses on its own
                    pass

    async def tick(self) -> None:
        now = utcnow()
        for m in await asyncio.to_thread(self.catalog.list_mirrors):
            ref = m.spec.ref
            if not m.spec.enabled or m.spec.frozen or ref in self._running:
                continue
            if m.next_run_at is None:
                first = now + min(jitter(m.spec), timedelta(seconds=self.tick_seconds * 2))
                await asyncio.to_thread(self.catalog.update_mirror_state, ref, next_run_at=first)
            elif m.next_run_at <= now:
                self.trigger(ref, "schedule")

    def trigger(self, ref: RepoRef, trigger: str) -> bool:
        """Start a check-and-sync now; if one is running, run again after it. False if not a mirror."""
        if ref in self._running:
            self._again.add(ref)
            return True
        task = asyncio.create_task(self._run(ref, trigger), name=f"sync {ref}")
        self._running[ref] = task
        return True

    async def _run(self, ref: RepoRef, trigger: str) -> None:
        try:
            while True:
                m = await asyncio.to_thread(self.catalog.get_mirror, ref)
                if m is None or not m.spec.enabled or m.spec.frozen:
                    return
                async with self._slots:
                    await self._check_and_sync(m, trigger)
                if ref not in self._again:
                    return
                self._again.discard(ref)
        finally:
            self._running.pop(ref, None)

    def _repo_free(self, ref: RepoRef) -> bool:
        """Is no other process syncing this repo? (A probe of its lock, let go at once.)"""
        assert self.coord is not None
        lock = self.coord.repo_lock(ref)
        if not lock.acquire(False):
            return False
        lock.release()
        return True

    async def _check_and_sync(self, m: MirrorRow, trigger: str) -> None:
        ref, spec = m.spec.ref, m.spec
        now = utcnow()
        t0, result = time.monotonic(), "up-to-date"
        state: dict[str, Any] = {"last_check_at": now, "next_run_at": next_run(spec.schedule, now) + jitter(spec)}
        if trigger == "schedule":
            if self.coord is not None and not await asyncio.to_thread(self._repo_free, ref):
                # another process syncs it right now (the scheduler moved while it ran): look again
                # soon, without asking the upstream anything
                await asyncio.to_thread(self.catalog.update_mirror_state, ref,
                                        next_run_at=now + timedelta(seconds=self.tick_seconds * 2))
                return
            # at once: a scheduler taking over meanwhile finds it fired; a retry soon, not a whole
            # interval later, if this process dies before it ends (the end sets the real next run)
            retry = now + timedelta(seconds=max(self.lease_ttl * 2, self.tick_seconds * 2))
            await asyncio.to_thread(self.catalog.update_mirror_state, ref,
                                    next_run_at=min(state["next_run_at"], retry))
        try:
            try:
                wanted = await self.syncer.resolve_revisions(spec)
            except RepoNotFound as e:
                raise await self.syncer.note_gone(ref, e) from None
            state["upstream"] = {rev: commit for rev, commit, _ in wanted}
            repo = await asyncio.to_thread(self.catalog.get_repo, ref)
            if repo is not None:
                await asyncio.to_thread(self.catalog.clear_gone, repo.pk)
            mirrored = await asyncio.to_thread(self.catalog.refs, repo) if repo else {}
            stale = repo is None
            for _rev, commit, name in wanted:
                if name is not None:
                    stale = stale or mirrored.get(name) != commit
                elif repo is not None:
                    stale = stale or await asyncio.to_thread(self.catalog.get_commit, repo, commit) is None
            if stale:
                # say what upstream has before syncing: status shows the update as pending
                # while it runs, never the new refs beside the old upstream answer
                await asyncio.to_thread(self.catalog.update_mirror_state, ref, upstream=state["upstream"],
                                        last_check_at=now)
                await self.syncer.sync(spec, trigger=trigger)
                state["last_sync_at"] = utcnow()
                result = "synced"
                if self.on_change:
                    self.on_change(ref)
            state["last_error"] = None
        except SyncBusy:
            result = "busy"
            state.pop("next_run_at")
            state["next_run_at"] = utcnow() + timedelta(seconds=self.tick_seconds * 2)
        except HubMirrorError as e:
            log.warning("mirror %s: %s", ref, e.message)
            if getattr(e, "sync_result", None) is None:  # failed in the check (the sync tells its own)
                await asyncio.to_thread(self.catalog.emit_sync_failed, ref, e, trigger)
            result = "failed"
            state.update(last_error=e.message, last_error_at=utcnow())
        except Exception as e:  # keep the scheduler alive, say what happened
            log.exception("mirror %s failed", ref)
            await asyncio.to_thread(self.catalog.emit_sync_failed, ref, e, trigger)
            result = "failed"
            state.update(last_error=f"{e.__class__.__name__}: {e}", last_error_at=utcnow())
        await asyncio.to_thread(self.catalog.update_mirror_state, ref, **state)
        if self.on_checked is not None:
            self.on_checked(ref, result, time.monotonic() - t0)


def describe(m: MirrorRow, mirrored: dict[str, str]) -> dict[str, Any]:
    """A mirror's status as `hubmirror status` prints it."""
    def t(d: datetime | None) -> str | None:
        return hub_time(d) if d else None

    revs = {}
    for rev, up in (m.upstream or {}).items():
        ours = mirrored.get(f"refs/heads/{rev}") or mirrored.get(f"refs/tags/{rev}") or mirrored.get(rev)
        revs[rev] = {"mirrored": ours, "upstream": up, "up_to_date": ours == up}
    return {
        "repo_id": m.spec.repo,
        "repo_type": m.spec.type.value,
        "source": m.source,
        "enabled": m.spec.enabled,
        "schedule": m.spec.schedule,
        "revisions": m.spec.revisions,
        "frozen": m.spec.frozen,
        "state": revs,
        "last_check": t(m.last_check_at),
        "last_sync": t(m.last_sync_at),
        "next_sync": t(m.next_run_at),
        "last_error": m.last_error,
    }

