"""Catalog queries for events (mixed into Catalog): the outbox, the webhook delivery log, post-sync
hook runs and event flags.

Every hand-over between processes is a compare-and-set UPDATE (`... WHERE id = :id AND <still
due>`): on SQLite the write transaction holds the one write lock (BEGIN IMMEDIATE); on PostgreSQL a
second UPDATE of the same row waits for the first to commit, re-checks its WHERE and changes
nothing. So of all the workers and replicas sharing the catalog exactly one takes each event,
each delivery attempt and each hook run.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..errors import HubMirrorError, RepoNotFound, SyncBusy
from ..model.names import RepoRef, RepoType
from . import schema as t
from .engine import insert, write
from .schema import utcnow

log = logging.getLogger("hubmirror.events")

MAX_OUTPUT = 4096  # characters of a hook's output kept


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    kind: str
    ref: RepoRef | None
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event: EventRow
    uuid: str
    target: str
    url: str
    attempts: int  # this one included
    claim: str


@dataclass(frozen=True, slots=True)
class HookRunRow:
    id: int
    hook: str
    ref: RepoRef
    revision: str
    commit: str
    old_commit: str | None
    is_check: bool
    attempts: int  # this one included
    claim: str


def _ref(repo_type: str | None, repo_id: str | None) -> RepoRef | None:
    return RepoRef(RepoType(repo_type), repo_id) if repo_type and repo_id else None


def _event(r: Any) -> EventRow:
    return EventRow(r.id, r.kind, _ref(r.repo_type, r.repo_id), json.loads(r.payload or "{}"), r.created_at)


def _text(d: datetime | None) -> str | None:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ") if d is not None else None


class EventQueries:
    engine: sa.Engine

    # -- the outbox -------------------------------------------------------------------------

    def emit_event(self, kind: str, repo_ref: RepoRef | None = None, /, **payload: Any) -> int | None:
        """Queue an event for the dispatcher (events/dispatcher.py). Best effort: a catalog that
        cannot be written (a full disk) loses the event with a warning and never fails the work
        that raised it. Callers never put a token or secret in `payload`."""
        ref = repo_ref
        body = {"repo_id": ref.repo_id, "repo_type": ref.repo_type.value, **payload} if ref else dict(payload)
        try:
            with write(self.engine) as c:
                res = c.execute(sa.insert(t.events).values(
                    kind=kind, repo_type=ref.repo_type.value if ref else None, repo_id=ref.repo_id if ref else None,
                    payload=json.dumps(body, default=str), created_at=utcnow()))
                return int(res.inserted_primary_key[0])  # type: ignore[index]
        except (HubMirrorError, sa.exc.SQLAlchemyError) as e:
            msg = e.message if isinstance(e, HubMirrorError) else e.__class__.__name__
            log.warning("could not record the %s event%s: %s", kind, f" of {ref}" if ref else "", msg)
            return None

    def changed_paths(self, repo_pk: int, old: str | None, new: str) -> list[str]:
        """Files added, changed or removed from commit `old` (None: nothing) to `new`, by path."""
        e = t.entries.c

        def files(c: sa.Connection, sha: str) -> dict[str, str]:
            q = sa.select(e.path, e.oid).where(e.repo == repo_pk, e.commit == sha, e.type == "file")
            return {r.path: r.oid for r in c.execute(q)}

        with self.engine.connect() as c:
            before = files(c, old) if old else {}
            after = files(c, new)
        return sorted((p for p in before.keys() | after.keys() if before.get(p) != after.get(p)),
                      key=lambda p: p.encode())

    def emit_commit_mirrored(self, repo: Any, revision: str, refname: str | None, old: str | None,
                             new: str) -> None:
        """A mirror's revision now points at a commit it did not point at (`repo`: a RepoRow)."""
        try:
            changed: int | None = len(self.changed_paths(repo.pk, old, new))
        except (HubMirrorError, sa.exc.SQLAlchemyError):
            changed = None
        self.emit_event("commit-mirrored", repo.ref, revision=revision, ref=refname, old_commit=old, commit=new,
                        changed_files=changed)

    def emit_sync_failed(self, ref: RepoRef, error: BaseException, trigger: str) -> None:
        """A sync (or a mirror's check) failed. A repo gone upstream is told once, by repo-gone; a
        sync that found another one running (SyncBusy) did not fail."""
        if isinstance(error, SyncBusy):
            return
        if isinstance(error, RepoNotFound):
            q = (sa.select(t.repo_gone.c.repo).join(t.repos, t.repos.c.id == t.repo_gone.c.repo)
                 .where(t.repos.c.repo_type == ref.repo_type.value, t.repos.c.repo_id == ref.repo_id))
            try:
                with self.engine.connect() as c:
                    if c.execute(q).first() is not None:
                        return
            except (HubMirrorError, sa.exc.SQLAlchemyError):
                pass
        message = error.message if isinstance(error, HubMirrorError) else f"{error.__class__.__name__}: {error}"
        self.emit_event("sync-failed", ref, error=message[:2000], trigger=trigger)

    def pending_events(self, limit: int = 100) -> list[int]:
        """Events no dispatcher has taken yet, oldest first."""
        q = (sa.select(t.events.c.id).where(t.events.c.fanned_out_at.is_(None))
             .order_by(t.events.c.id).limit(limit))
        with self.engine.connect() as c:
            return [r.id for r in c.execute(q)]

    def fan_out(
        self, ids: list[int], plan: Callable[[EventRow], tuple[list[dict[str, str]], list[dict[str, Any]]]],
        *, max_age: timedelta,
    ) -> list[EventRow]:
        """Take each event not taken yet (compare-and-set) and, in the same transaction, queue what
        `plan` says: deliveries ({target, url}) and hook runs ({hook, revision, commit, old_commit,
        is_check}; one per repo, commit and hook however many events name them). An event older
        than `max_age` is taken and dropped. Returns the events taken."""
        now = utcnow()
        taken: list[EventRow] = []
        ev_c, d_c = t.events.c, t.deliveries
        with write(self.engine) as c:
            for event_id in ids:
                r = c.execute(sa.select(t.events).where(ev_c.id == event_id, ev_c.fanned_out_at.is_(None))).first()
                if r is None:
                    continue
                if not c.execute(sa.update(t.events).where(ev_c.id == event_id, ev_c.fanned_out_at.is_(None))
                                 .values(fanned_out_at=now)).rowcount:
                    continue
                ev = _event(r)
                taken.append(ev)
                if now - ev.created_at > max_age:
                    log.warning("dropped the %s event %d of %s: older than %s when a server first saw it",
                                ev.kind, ev.id, _text(ev.created_at), max_age)
                    continue
                deliveries, runs = plan(ev)
                for d in deliveries:
                    c.execute(sa.insert(d_c).values(
                        event=ev.id, uuid=str(uuid.uuid4()), target=d["target"], url=d["url"], status="queued",
                        attempts=0, next_attempt_at=now, created_at=now))
                for h in runs:
                    assert ev.ref is not None
                    c.execute(insert(c, t.hook_runs).values(
                        repo_type=ev.ref.repo_type.value, repo_id=ev.ref.repo_id, status="queued", attempts=0,
                        created_at=now, **h,
                    ).on_conflict_do_nothing(index_elements=["repo_type", "repo_id", "commit", "hook"]))
        return taken

    def prune_events(self, before: datetime) -> int:
        """Forget events (and their delivery log) created before `before`."""
        old = sa.select(t.events.c.id).where(t.events.c.created_at < before, t.events.c.fanned_out_at.is_not(None))
        with write(self.engine) as c:
            c.execute(sa.delete(t.deliveries).where(t.deliveries.c.event.in_(old)))
            return int(c.execute(sa.delete(t.events).where(t.events.c.id.in_(old))).rowcount)

    # -- webhook deliveries -----------------------------------------------------------------

    def _due_deliveries(self, now: datetime) -> Any:
        d = t.deliveries.c
        return sa.or_(sa.and_(d.status == "queued", d.next_attempt_at <= now),
                      sa.and_(d.status == "sending", d.claimed_until < now))  # its sender died

    def claim_deliveries(self, claim: str, lease: float, limit: int = 16) -> list[DeliveryRow]:
        """Take up to `limit` due deliveries for one attempt each, for `lease` seconds."""
        d = t.deliveries.c
        now = utcnow()
        due = self._due_deliveries(now)
        with self.engine.connect() as c:  # a cheap look first: most ticks find nothing
            ids = [r.id for r in c.execute(sa.select(d.id).where(due).order_by(d.next_attempt_at).limit(limit))]
        if not ids:
            return []
        mine: list[int] = []
        with write(self.engine) as c:
            for i in ids:
                if c.execute(sa.update(t.deliveries).where(d.id == i, due).values(
                        status="sending", claim=claim, claimed_until=now + timedelta(seconds=lease),
                        attempts=d.attempts + 1)).rowcount:
                    mine.append(i)
            if not mine:
                return []
            rows = c.execute(sa.select(t.deliveries, t.events.c.kind, t.events.c.repo_type, t.events.c.repo_id,
                                       t.events.c.payload, t.events.c.created_at.label("event_at"))
                             .join(t.events, t.events.c.id == d.event).where(d.id.in_(mine)).order_by(d.id)).all()
        return [DeliveryRow(r.id, EventRow(r.event, r.kind, _ref(r.repo_type, r.repo_id), json.loads(r.payload),
                                           r.event_at), r.uuid, r.target, r.url, r.attempts, claim) for r in rows]

    def finish_delivery(self, delivery_id: int, claim: str, *, status: str, http_status: int | None = None,
                        error: str | None = None, retry_at: datetime | None = None, refund: bool = False) -> bool:
        """Record an attempt: `status` delivered, failed (given up) or queued (again at `retry_at`;
        `refund`: the attempt did not happen, e.g. the server stopped). False if the claim was lost."""
        d = t.deliveries.c
        values: dict[str, Any] = {"status": status, "claim": None, "claimed_until": None}
        if not refund:
            values.update(last_status=http_status, last_error=error[:1000] if error else None)
        else:
            values["attempts"] = d.attempts - 1
        if status == "delivered":
            values["delivered_at"] = utcnow()
        if status == "queued":
            values["next_attempt_at"] = retry_at or utcnow()
        with write(self.engine) as c:
            return bool(c.execute(sa.update(t.deliveries).where(d.id == delivery_id, d.claim == claim)
                                  .values(**values)).rowcount)

    def delivery_log(self, limit: int = 50, target: str | None = None) -> list[dict[str, Any]]:
        """The newest deliveries first: event, target, url, status, attempts, last status or error."""
        d = t.deliveries.c
        q = (sa.select(t.deliveries, t.events.c.kind, t.events.c.repo_type, t.events.c.repo_id,
                       t.events.c.created_at.label("event_at"))
             .join(t.events, t.events.c.id == d.event).order_by(d.id.desc()).limit(max(limit, 0)))
        if target is not None:
            q = q.where(d.target == target)
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        return [{
            "id": r.id, "delivery": r.uuid, "event": r.kind, "event_id": r.event,
            "repo_id": r.repo_id, "repo_type": r.repo_type, "target": r.target, "url": r.url, "status": r.status,
            "attempts": r.attempts, "last_status": r.last_status, "last_error": r.last_error,
            "created_at": _text(r.created_at), "delivered_at": _text(r.delivered_at),
            "next_attempt_at": _text(r.next_attempt_at) if r.status == "queued" else None,
        } for r in rows]

    def delivery_counts(self, since: datetime) -> dict[str, int]:
        """Deliveries created since `since`, by status."""
        d = t.deliveries.c
        q = sa.select(d.status, sa.func.count()).where(d.created_at >= since).group_by(d.status)
        with self.engine.connect() as c:
            return {r[0]: int(r[1]) for r in c.execute(q)}

    # -- post-sync hook runs ----------------------------------------------------------------

    def claim_hook_runs(self, claim: str, lease: float, limit: int = 1) -> list[HookRunRow]:
        """Take up to `limit` queued hook runs (or runs whose process stopped renewing them)."""
        h = t.hook_runs.c
        now = utcnow()
        due = sa.or_(h.status == "queued", sa.and_(h.status == "running", h.claimed_until < now))
        with self.engine.connect() as c:
            ids = [r.id for r in c.execute(sa.select(h.id).where(due).order_by(h.id).limit(limit))]
        if not ids:
            return []
        mine: list[int] = []
        with write(self.engine) as c:
            for i in ids:
                if c.execute(sa.update(t.hook_runs).where(h.id == i, due).values(
                        status="running", claim=claim, claimed_until=now + timedelta(seconds=lease),
                        attempts=h.attempts + 1, started_at=now)).rowcount:
                    mine.append(i)
            rows = c.execute(sa.select(t.hook_runs).where(h.id.in_(mine)).order_by(h.id)).all() if mine else []
        return [HookRunRow(r.id, r.hook, RepoRef(RepoType(r.repo_type), r.repo_id), r.revision, r.commit,
                           r.old_commit, bool(r.is_check), r.attempts, claim) for r in rows]

    def renew_hook_run(self, run_id: int, claim: str, lease: float) -> bool:
        """Still running it: keep the claim `lease` seconds more. False if it was lost."""
        h = t.hook_runs.c
        with write(self.engine) as c:
            return bool(c.execute(sa.update(t.hook_runs).where(h.id == run_id, h.claim == claim)
                                  .values(claimed_until=utcnow() + timedelta(seconds=lease))).rowcount)

    def finish_hook_run(self, run_id: int, claim: str, *, result: str | None, exit_code: int | None = None,
                        duration: float | None = None, output: str = "", requeue: bool = False) -> bool:
        """Record a hook's result; or with `requeue` hand the run back (this server stops)."""
        h = t.hook_runs.c
        if requeue:
            values: dict[str, Any] = {"status": "queued", "claim": None, "claimed_until": None,
                                      "attempts": h.attempts - 1, "started_at": None}
        else:
            values = {"status": "done", "result": result, "exit_code": exit_code,
                      "duration": round(duration, 3) if duration is not None else None,
                      "output": output[-MAX_OUTPUT:], "claim": None, "claimed_until": None, "finished_at": utcnow()}
        with write(self.engine) as c:
            return bool(c.execute(sa.update(t.hook_runs).where(h.id == run_id, h.claim == claim)
                                  .values(**values)).rowcount)

    def hook_runs(self, ref: RepoRef, limit: int = 20, latest_only: bool = False) -> list[dict[str, Any]]:
        """Hook runs of a repo, newest first; `latest_only`: the newest of each hook."""
        h = t.hook_runs.c
        q = (sa.select(t.hook_runs).where(h.repo_type == ref.repo_type.value, h.repo_id == ref.repo_id)
             .order_by(h.id.desc()))
        if not latest_only:
            q = q.limit(max(limit, 0))
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        with self.engine.connect() as c:
            for r in c.execute(q):
                if latest_only:
                    if r.hook in seen:
                        continue
                    seen.add(r.hook)
                out.append({
                    "hook": r.hook, "check": bool(r.is_check), "revision": r.revision, "commit": r.commit,
                    "old_commit": r.old_commit, "status": r.status, "result": r.result, "exit_code": r.exit_code,
                    "duration": r.duration, "output": r.output, "started_at": _text(r.started_at),
                    "finished_at": _text(r.finished_at),
                })
        return out

    # -- flags ------------------------------------------------------------------------------

    def flip_event_flag(self, key: str, old: str, new: str) -> bool:
        """Set flag `key` from `old` to `new` (a missing flag counts as `old`); True for the one
        caller that changed it, however many processes try at once."""
        s = t.event_state.c
        with write(self.engine) as c:
            c.execute(insert(c, t.event_state).values(key=key, value=old, updated_at=utcnow())
                      .on_conflict_do_nothing(index_elements=["key"]))
            return bool(c.execute(sa.update(t.event_state).where(s.key == key, s.value == old)
                                  .values(value=new, updated_at=utcnow())).rowcount)

    def event_flag(self, key: str) -> str | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.event_state.c.value).where(t.event_state.c.key == key)).first()
        return str(r.value) if r else None
