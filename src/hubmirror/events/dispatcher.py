"""The dispatcher: one background task per server process that turns the catalog's events into
webhook deliveries and hook runs, sends and runs them, and watches the free disk space.

Each tick (every `poll` seconds) it

1. takes the events no process has taken (compare-and-set) and queues, in the same transaction,
   one delivery per `[[notify]]` target that wants the event and, for commit-mirrored, one run per
   matching `[[hooks]]` table;
2. claims due deliveries for one attempt each (compare-and-set, with a lease a dead process's
   claims expire by) and sends them concurrently; a failed attempt is queued again after the
   backoff, or given up after `attempts`;
3. claims queued hook runs (at most `max_hooks` at once in this process), renewing the claim
   while the hook runs;
4. every `disk_every` seconds compares the store's free space with the disk-low threshold and
   emits disk-low when it crosses under it (a catalog flag flipped by compare-and-set: once per
   crossing, whichever process sees it first; re-armed once the space is 5% above the threshold).

Everything is in the catalog, so a delivery or hook run queued when the server stops is done
after it starts again, and several workers or replicas do each once. Nothing here runs on a
request's or a sync's path: they only insert an event row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .. import __version__
from ..catalog import Catalog
from ..catalog.events import DeliveryRow, EventRow, HookRunRow
from ..catalog.schema import utcnow
from ..errors import HubMirrorError
from ..proxy.rules import Rules
from ..store import BlobStore
from . import hooks as hk
from .kinds import TEST_EVENT
from .notify import backoff, body_for, describe, headers_for, send
from .settings import HookSettings, NotifySettings, display_url

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("hubmirror.events")

DISK_FLAG = "disk-low"
HOOK_LEASE = 120.0  # seconds; renewed every HOOK_LEASE / 4 while the hook runs
MAX_HOOK_ATTEMPTS = 2  # a run whose process died is started again once, then recorded "interrupted"


def endpoint_of(s: Settings) -> str:
    """This server's URL as a hook reaches it: `public_url`, else the address it listens on."""
    if s.public_url:
        return s.public_url
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(s.host, s.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{s.port}"


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        *,
        notify: list[NotifySettings],
        hooks: list[HookSettings],
        data: Path,
        endpoint: str,
        disk_low: int | None,
        poll: float = 1.0,
        disk_every: float = 60.0,
        max_age: timedelta = timedelta(days=1),
        keep: timedelta = timedelta(days=30),
        max_deliveries: int = 8,
        max_hooks: int = 2,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.targets = {n.key: n for n in notify}
        self.hooks = {h.key: h for h in hooks}
        self._hook_rules = {h.key: Rules(h.repos, []) for h in hooks}
        self.run_root = data / "hooks"
        self.endpoint = endpoint
        self.disk_low = disk_low
        self.poll = poll
        self.disk_every = disk_every
        self.max_age = max_age
        self.keep = keep
        self.max_deliveries = max_deliveries
        self.max_hooks = max_hooks
        self._lease = max([3 * n.timeout for n in notify] or [0]) + 30.0
        self._deliveries: set[asyncio.Task[None]] = set()
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._last_disk = -float("inf")
        self._last_prune = -float("inf")

    @classmethod
    def from_settings(cls, s: Settings, catalog: Catalog, store: BlobStore, **kwargs: Any) -> Dispatcher:
        threshold = int(s.disk_low) if s.disk_low is not None else 2 * int(s.proxy.min_free)
        return cls(catalog, store, notify=s.notify, hooks=s.hooks, data=s.data, endpoint=endpoint_of(s),
                   disk_low=threshold, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._sweep_runs)
        self._task = asyncio.create_task(self._loop(), name="hubmirror-events")

    async def stop(self) -> None:
        """Stop; what is in flight is handed back to the catalog for the next process."""
        self._stopping.set()  # the loop ends between ticks: never with a claim taken and not started
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        tasks = [*self._deliveries, *self._hook_tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except HubMirrorError as e:  # the catalog is busy or unreachable: next tick
                log.warning("events: %s", e.message)
            except Exception:
                log.exception("events: tick failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), self.poll)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        await self.fan_out()
        await self._start_deliveries()
        await self._start_hooks()
        now = time.monotonic()
        if now - self._last_disk >= self.disk_every:
            self._last_disk = now
            await self.check_disk()
        if now - self._last_prune >= 3600:
            self._last_prune = now
            n = await asyncio.to_thread(self.catalog.prune_events, utcnow() - self.keep)
            if n:
                log.info("forgot %d events older than %s (and their delivery log)", n, self.keep)

    async def drain(self) -> None:
        """Wait for what this process has in flight (tests)."""
        await asyncio.gather(*self._deliveries, *self._hook_tasks, return_exceptions=True)

    # -- events -> deliveries and hook runs ---------------------------------------------------

    def plan(self, ev: EventRow) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        deliveries = []
        for n in self.targets.values():
            if ev.kind == TEST_EVENT:
                if ev.payload.get("target") not in (None, n.key):
                    continue
            elif ev.kind not in n.events:
                continue
            deliveries.append({"target": n.key, "url": display_url(n.url)})
        runs: list[dict[str, Any]] = []
        if ev.kind == "commit-mirrored" and ev.ref is not None:
            for h in self.hooks.values():
                if self._hook_rules[h.key].allows(ev.ref):
                    runs.append({"hook": h.key, "revision": str(ev.payload.get("revision") or ev.payload["commit"]),
                                 "commit": ev.payload["commit"], "old_commit": ev.payload.get("old_commit"),
                                 "is_check": h.check})
        return deliveries, runs

    async def fan_out(self) -> int:
        ids = await asyncio.to_thread(self.catalog.pending_events)
        if not ids:
            return 0
        taken = await asyncio.to_thread(self.catalog.fan_out, ids, self.plan, max_age=self.max_age)
        return len(taken)

    # -- webhooks -------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_deliveries),
                headers={"User-Agent": f"hubmirror/{__version__}"},
                max_line_size=16 << 10, max_field_size=16 << 10,
            )
        return self._session

    async def _start_deliveries(self) -> None:
        free = self.max_deliveries - len(self._deliveries)
        if free <= 0:
            return
        claim = secrets.token_hex(8)
        rows = await asyncio.to_thread(self.catalog.claim_deliveries, claim, self._lease, free)
        for d in rows:
            task = asyncio.create_task(_logged(self._deliver(d), f"delivery {d.id}"), name=f"delivery {d.id}")
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, d: DeliveryRow) -> None:
        finish = self.catalog.finish_delivery
        target = self.targets.get(d.target)
        if target is None:
            await asyncio.to_thread(finish, d.id, d.claim, status="failed",
                                    error=f"no [[notify]] table named {d.target!r} is configured any more")
            return
        if d.attempts > target.attempts:  # its sender died after the last attempt
            await asyncio.to_thread(finish, d.id, d.claim, status="failed",
                                    error=f"gave up after {target.attempts} attempts")
            return
        body = body_for(d.event, d.uuid, self.endpoint)
        try:
            a = await send(self._http(), target, body, headers_for(target, d.event, d.uuid, d.attempts, body))
        except asyncio.CancelledError:
            await asyncio.to_thread(finish, d.id, d.claim, status="queued", refund=True)
            raise
        what = f"{d.event.kind} event {d.event.id} to {describe(target)}"
        if a.delivered:
            log.info("delivered the %s (attempt %d, %s)", what, d.attempts, a.status)
            await asyncio.to_thread(finish, d.id, d.claim, status="delivered", http_status=a.status)
        elif a.retry and d.attempts < target.attempts:
            delay = backoff(target, d.attempts, a.retry_after)
            log.warning("could not deliver the %s (attempt %d of %d): %s; again in %.0f s", what, d.attempts,
                        target.attempts, a.error, delay)
            await asyncio.to_thread(finish, d.id, d.claim, status="queued", http_status=a.status, error=a.error,
                                    retry_at=utcnow() + timedelta(seconds=delay))
        else:
            why = f"{a.error} (gave up after {d.attempts} attempts)" if a.retry else a.error
            log.error("could not deliver the %s: %s", what, why)
            await asyncio.to_thread(finish, d.id, d.claim, status="failed", http_status=a.status, error=why)

    # -- hooks --------------------------------------------------------------------------------

    async def _start_hooks(self) -> None:
        free = self.max_hooks - len(self._hook_tasks)
        if free <= 0 or not self.hooks:
            return
        claim = secrets.token_hex(8)
        rows = await asyncio.to_thread(self.catalog.claim_hook_runs, claim, HOOK_LEASE, free)
        for r in rows:
            what = f"hook {r.hook} on {r.ref}@{r.commit[:12]}"
            task = asyncio.create_task(_logged(self._run_hook(r), what), name=what)
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, r: HookRunRow) -> None:
        finish = self.catalog.finish_hook_run
        hook = self.hooks.get(r.hook)
        if hook is None:
            await asyncio.to_thread(finish, r.id, r.claim, result="error",
                                    output=f"no [[hooks]] table named {r.hook!r} is configured any more")
            return
        if r.attempts > MAX_HOOK_ATTEMPTS:
            await asyncio.to_thread(finish, r.id, r.claim, result="interrupted",
                                    output="the server running it stopped, twice; not started again")
            await self._hook_failed(r, hook, hk.Outcome("interrupted", None, 0.0, ""))
            return
        heartbeat = asyncio.create_task(self._renew(r))
        run_dir = self.run_root / f"run-{os.getpid()}-{r.id}-{secrets.token_hex(4)}"
        try:
            outcome = await self._run_hook_in(r, hook, run_dir)
        except asyncio.CancelledError:
            await asyncio.to_thread(finish, r.id, r.claim, result=None, requeue=True)
            raise
        finally:
            heartbeat.cancel()
            await asyncio.to_thread(hk.remove_tree, run_dir)
        (log.info if outcome.result == "ok" else log.warning)(
            "hook %s on %s@%s: %s in %.1f s", hook.key, r.ref, r.commit[:12], outcome.summary(), outcome.duration)
        await asyncio.to_thread(finish, r.id, r.claim, result=outcome.result, exit_code=outcome.exit_code,
                                duration=outcome.duration, output=outcome.output)
        if outcome.result != "ok":
            await self._hook_failed(r, hook, outcome)

    async def _run_hook_in(self, r: HookRunRow, hook: HookSettings, run_dir: Path) -> hk.Outcome:
        t0 = time.monotonic()
        try:
            user = hk.hook_user(hook)
            snap = await asyncio.to_thread(self._prepare, r, hook, run_dir, user)
        except HubMirrorError as e:
            return hk.Outcome("error", None, time.monotonic() - t0, e.message)
        except OSError as e:
            return hk.Outcome("error", None, time.monotonic() - t0,
                              f"could not prepare the snapshot: {e.strerror or e} {e.filename or ''}".strip())
        env = hk.hook_env(hook, r, endpoint=self.endpoint, snapshot=snap, changed_files=run_dir / "changed-files",
                          user=user)
        outcome = await hk.run_command(hook.command, env=env, cwd=snap.folder or run_dir, timeout=hook.timeout,
                                       user=user)
        if snap.note and snap.folder is not None:
            outcome.output = (f"[hubmirror] {snap.note}\n" + outcome.output)[-4096:]
        for sha, actual in await asyncio.to_thread(hk.check_blobs, self.store, snap):
            log.error("hook %s modified the stored blob %s (it hashes to %s now): removed from the store; "
                      "`hubmirror scrub --repair` fetches it again", hook.key, sha, actual)
            await asyncio.to_thread(self.catalog.audit, "scrub-corrupt", r.ref, sha256=sha, actual=actual,
                                    hook=hook.key)
            await asyncio.to_thread(self.catalog.emit_event, "scrub-corrupt", None, sha256=sha, actual=actual,
                                    hook=hook.key)
        return outcome

    def _prepare(self, r: HookRunRow, hook: HookSettings, run_dir: Path, user: hk.HookUser | None) -> hk.Snapshot:
        self.run_root.mkdir(exist_ok=True)
        self.run_root.chmod(0o755)  # whatever the umask: the hook's user passes through
        run_dir.mkdir()
        run_dir.chmod(0o755)
        snap = hk.build_snapshot(self.catalog, self.store, r, run_dir / "snapshot", int(hook.snapshot_max))
        repo = self.catalog.get_repo(r.ref)
        assert repo is not None  # build_snapshot found it
        changed = self.catalog.changed_paths(repo.pk, r.old_commit, r.commit)
        listing = run_dir / "changed-files"
        listing.write_text("".join(p + "\n" for p in changed), encoding="utf-8")
        os.chmod(listing, 0o444)
        os.chmod(run_dir, 0o555)
        if user is not None and not hk.reachable(run_dir, user):
            raise hk.HookError(f"the hook's user {user.name} cannot reach {run_dir}: let others search the data "
                               f"folder and the folders above it (chmod o+x), or set user = ...")
        return snap

    async def _renew(self, r: HookRunRow) -> None:
        while True:
            await asyncio.sleep(HOOK_LEASE / 4)
            try:
                await asyncio.to_thread(self.catalog.renew_hook_run, r.id, r.claim, HOOK_LEASE)
            except HubMirrorError as e:
                log.warning("could not renew the claim of hook run %d: %s", r.id, e.message)
            except Exception:
                log.exception("could not renew the claim of hook run %d", r.id)

    async def _hook_failed(self, r: HookRunRow, hook: HookSettings, outcome: hk.Outcome) -> None:
        await asyncio.to_thread(
            self.catalog.emit_event, "hook-failed", r.ref, hook=hook.key, check=hook.check, revision=r.revision,
            commit=r.commit, result=outcome.result, exit_code=outcome.exit_code,
            duration=round(outcome.duration, 3), output_tail=outcome.output[-1024:])

    def _sweep_runs(self) -> None:
        """Remove the run folders of processes that died (each process names its own with its pid)."""
        if not self.run_root.is_dir():
            return
        for p in self.run_root.iterdir():
            parts = p.name.split("-")
            if len(parts) < 3 or parts[0] != "run" or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid():
                try:
                    os.kill(pid, 0)
                    continue
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
            hk.remove_tree(p)

    # -- disk ---------------------------------------------------------------------------------

    async def check_disk(self) -> None:
        if self.disk_low is None or not any("disk-low" in n.events for n in self.targets.values()):
            return
        free = await asyncio.to_thread(self.store.free_bytes)
        if free is None:
            return
        if free < self.disk_low:
            if await asyncio.to_thread(self.catalog.flip_event_flag, DISK_FLAG, "ok", "low"):
                log.warning("free space for blobs is %d bytes, under the disk-low threshold of %d", free,
                            self.disk_low)
                await asyncio.to_thread(self.catalog.emit_event, "disk-low", None, free_bytes=free,
                                        threshold_bytes=self.disk_low)
        elif free > self.disk_low * 1.05 and await asyncio.to_thread(self.catalog.flip_event_flag, DISK_FLAG, "low",
                                                                    "ok"):
            log.info("free space for blobs is back above the disk-low threshold (%d bytes free)", free)


async def _logged(work: Any, what: str) -> None:
    """Run `work`; a failure (the catalog unreachable while recording) is logged, not lost."""
    try:
        await work
    except HubMirrorError as e:
        log.warning("%s: %s", what, e.message)
    except Exception:
        log.exception("%s failed", what)
