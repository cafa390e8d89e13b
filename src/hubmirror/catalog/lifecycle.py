"""Catalog queries for pins, the audit log, repos gone upstream, retention and purge (mixed into Catalog)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import HubMirrorError
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, RepoType
from . import schema as t
from .engine import insert, write
from .schema import utcnow

# rows fetched at a time by the queries that stream (server-side cursors on PostgreSQL)
STREAM_BATCH = 10_000
# blobs asked about at a time by `referenced_among` (bound parameters per statement)
ASK_BATCH = 500


@dataclass(frozen=True)
class ImportedRepo:
    """One repo of an import, for `record_import`: its commits (each with every entry), the refs
    to set, and the detail of its audit-log entry. `commits` may be a generator."""

    ref: RepoRef
    origin: str
    commits: Iterable[tuple[Commit, Iterable[Entry]]]
    refs: Mapping[str, str]
    audit: Mapping[str, Any] = field(default_factory=dict)


class LifecycleQueries:
    engine: sa.Engine

    # -- pins -------------------------------------------------------------------------------

    def pin(self, repo_pk: int, commit: str, revision: str, note: str) -> bool:
        """Pin a commit (True), or update the revision and, if given, the note of its pin (False)."""
        with write(self.engine) as c:
            created = c.execute(insert(c, t.pins).values(
                repo=repo_pk, commit=commit, revision=revision, note=note, created_at=utcnow(),
            ).on_conflict_do_nothing(index_elements=["repo", "commit"])).rowcount
            if created:
                return True
            values: dict[str, Any] = {"revision": revision}
            if note:
                values["note"] = note
            c.execute(sa.update(t.pins).where(t.pins.c.repo == repo_pk, t.pins.c.commit == commit).values(**values))
            return False

    def unpin(self, repo_pk: int, commit: str) -> bool:
        with write(self.engine) as c:
            return bool(c.execute(sa.delete(t.pins).where(t.pins.c.repo == repo_pk, t.pins.c.commit == commit)).rowcount)

    def pins(self) -> list[dict[str, Any]]:
        q = (
            sa.select(t.repos.c.repo_type, t.repos.c.repo_id, t.pins.c.commit, t.pins.c.revision, t.pins.c.note,
                      t.pins.c.created_at)
            .join(t.repos, t.repos.c.id == t.pins.c.repo)
            .order_by(t.repos.c.repo_type, t.repos.c.repo_id, t.pins.c.created_at)
        )
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q).all()]

    # -- audit ------------------------------------------------------------------------------

    def audit(self, action: str, ref: RepoRef | None, *, actor: str | None = None, client: str | None = None,
              **detail: Any) -> None:
        """Record an action. `actor` names who did it (`cli:alice`, `user:bob (token ci)`), `client` where
        from (`local`, an address). Callers never put a token, hash or secret in `detail`."""
        with write(self.engine) as c:
            c.execute(sa.insert(t.audit_log).values(
                at=utcnow(), action=action, repo_type=ref.repo_type.value if ref else None,
                repo_id=ref.repo_id if ref else None, detail=json.dumps(detail, default=str),
                actor=actor[:200] if actor is not None else None, client=client[:100] if client is not None else None))

    def audit_events(self, ref: RepoRef | None = None, action: str | None = None, since: datetime | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first: those of `ref`, of `action`, at or after `since` (naive UTC, or
        aware), and with `limit` only the newest `limit` of them."""
        q = sa.select(t.audit_log)
        if ref is not None:
            q = q.where(t.audit_log.c.repo_type == ref.repo_type.value, t.audit_log.c.repo_id == ref.repo_id)
        if action is not None:
            q = q.where(t.audit_log.c.action == action)
        if since is not None:
            if since.tzinfo is not None:
                since = since.astimezone(timezone.utc).replace(tzinfo=None)
            q = q.where(t.audit_log.c.at >= since)
        if limit is not None:
            q = q.order_by(t.audit_log.c.id.desc()).limit(max(limit, 0))
        else:
            q = q.order_by(t.audit_log.c.id)
        with self.engine.connect() as c:
            rows = list(c.execute(q).all())
        if limit is not None:
            rows.reverse()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d["detail"] = json.loads(d["detail"] or "{}")
            out.append(d)
        return out

    # -- upstream gone ----------------------------------------------------------------------

    def mark_gone(self, repo_pk: int, message: str) -> bool:
        """True if this is news (the repo was not marked yet)."""
        with write(self.engine) as c:
            return bool(c.execute(insert(c, t.repo_gone).values(repo=repo_pk, since=utcnow(), message=message[:1000])
                                  .on_conflict_do_nothing(index_elements=["repo"])).rowcount)

    def clear_gone(self, repo_pk: int) -> None:
        with write(self.engine) as c:
            c.execute(sa.delete(t.repo_gone).where(t.repo_gone.c.repo == repo_pk))

    def gone(self) -> dict[int, tuple[datetime, str]]:
        with self.engine.connect() as c:
            return {r.repo: (r.since, r.message) for r in c.execute(sa.select(t.repo_gone)).all()}

    # -- retention, gc, purge ---------------------------------------------------------------

    def all_commits(self) -> list[tuple[int, str, str]]:
        """(repo pk, repo origin, commit sha) of every recorded commit (gc streams `retention_view`)."""
        with self.engine.connect() as c:
            return list(_commits(c))

    def all_refs(self) -> list[tuple[int, str, str]]:
        with self.engine.connect() as c:
            return list(_refs(c))

    def ref_log_all(self) -> list[tuple[int, str, str | None, datetime]]:
        """(repo, ref name, new commit, at), oldest first."""
        with self.engine.connect() as c:
            return list(_ref_log(c))

    def pinned_commits(self) -> set[tuple[int, str]]:
        with self.engine.connect() as c:
            return set(_pins(c))

    @contextmanager
    def retention_view(self) -> Iterator[RetentionView]:
        """One consistent snapshot of what retention reads (repos, refs, pins, ref log, commits), each
        streamed in batches: gc's memory does not grow with the size of these tables' reads, and a
        commit recorded while it reads is either seen with its refs or not at all."""
        with self.engine.connect() as c:
            if c.dialect.name == "postgresql":
                c = c.execution_options(isolation_level="REPEATABLE READ")
                c.execute(sa.text("SELECT 1"))  # the snapshot is taken by the first statement
            else:
                # pysqlite only opens a transaction before a write: without one each SELECT would
                # read its own snapshot (a WAL read transaction lets writers go on)
                c.exec_driver_sql("BEGIN")
            try:
                yield RetentionView(c)
            finally:
                c.rollback()

    def count_commits(self, repo_pk: int) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(t.commits)
                                 .where(t.commits.c.repo == repo_pk)).scalar() or 0)

    def delete_commits(self, commits: Iterable[tuple[int, str]]) -> int:
        n = 0
        with write(self.engine) as c:
            for repo, sha in commits:
                c.execute(sa.delete(t.entries).where(t.entries.c.repo == repo, t.entries.c.commit == sha))
                c.execute(sa.delete(t.upstream_info).where(t.upstream_info.c.repo == repo, t.upstream_info.c.commit == sha))
                n += c.execute(sa.delete(t.commits).where(t.commits.c.repo == repo, t.commits.c.sha == sha)).rowcount
        return n

    def referenced_blobs(self, excluding: set[tuple[int, str]] | None = None) -> set[str]:
        """Every blob some recorded commit references, not counting the (repo, commit)s `excluding`.
        The answer holds every referenced blob: gc asks `referenced_among` batch by batch instead."""
        e = t.entries.c
        with self.engine.connect() as c:
            if not excluding:
                q = sa.select(e.sha256).where(e.sha256.is_not(None)).distinct()
                return {r.sha256 for r in _stream(c, q)}
            q = sa.select(e.repo, e.commit, e.sha256).where(e.sha256.is_not(None)).distinct()
            return {r.sha256 for r in _stream(c, q) if (r.repo, r.commit) not in excluding}

    def referenced_among(self, shas: Iterable[str], excluding: Collection[tuple[int, str]] | None = None) -> set[str]:
        """Those of `shas` that some recorded commit references, not counting the (repo, commit)s
        `excluding`: `referenced_blobs() & set(shas)`, asked ASK_BATCH blobs at a time (by the
        entries' sha256 index), so that a sweep over millions of blobs holds one batch at a time."""
        e = t.entries.c
        wanted = sorted(set(shas))
        out: set[str] = set()
        with self.engine.connect() as c:
            for i in range(0, len(wanted), ASK_BATCH):
                part = wanted[i : i + ASK_BATCH]
                if not excluding:
                    q = sa.select(e.sha256).where(e.sha256.in_(part)).distinct()
                    out.update(r.sha256 for r in c.execute(q))
                else:
                    q = sa.select(e.repo, e.commit, e.sha256).where(e.sha256.in_(part)).distinct()
                    out.update(r.sha256 for r in c.execute(q) if (r.repo, r.commit) not in excluding)
        return out

    def blobs_of_repo(self, repo_pk: int) -> set[str]:
        with self.engine.connect() as c:
            return {r.sha256 for r in _stream(c, sa.select(t.entries.c.sha256).where(
                t.entries.c.repo == repo_pk, t.entries.c.sha256.is_not(None)).distinct())}

    def delete_repo(self, repo_pk: int) -> None:
        with write(self.engine) as c:
            for table in (t.entries, t.upstream_info, t.pins, t.refs, t.ref_log, t.repo_gone):
                c.execute(sa.delete(table).where(table.c.repo == repo_pk))
            c.execute(sa.delete(t.commits).where(t.commits.c.repo == repo_pk))
            c.execute(sa.delete(t.repos).where(t.repos.c.id == repo_pk))

    def where_is(self, sha256: str) -> tuple[int, str, str, bool] | None:
        """One (repo pk, commit, path, lfs) whose entry has this blob, to re-fetch it from the upstream."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.entries.c.repo, t.entries.c.commit, t.entries.c.path, t.entries.c.lfs)
                          .where(t.entries.c.sha256 == sha256).limit(1)).first()
        return (r.repo, r.commit, r.path, bool(r.lfs)) if r else None

    def entry_blob_sizes(self) -> Iterator[tuple[str, int]]:
        """Every distinct (sha256, size) that a file entry records, streamed (for scrub)."""
        q = (sa.select(t.entries.c.sha256, t.entries.c.size).where(t.entries.c.sha256.is_not(None))
             .distinct())
        with self.engine.connect() as c:
            for r in c.execution_options(stream_results=True, yield_per=10_000).execute(q):
                yield r.sha256, r.size

    def entry_with_size(self, sha256: str, size: int) -> tuple[RepoRef, str, str] | None:
        """One (repo, commit, path) whose entry records this blob with this size (to name in a report)."""
        q = (sa.select(t.repos.c.repo_type, t.repos.c.repo_id, t.entries.c.commit, t.entries.c.path)
             .join(t.repos, t.repos.c.id == t.entries.c.repo)
             .where(t.entries.c.sha256 == sha256, t.entries.c.size == size).limit(1))
        with self.engine.connect() as c:
            r = c.execute(q).first()
        return (RepoRef(RepoType(r.repo_type), r.repo_id), r.commit, r.path) if r else None

    # -- import ------------------------------------------------------------------------------

    def record_import(self, repos: Iterable[ImportedRepo], *, reason: str, action: str) -> None:
        """Create the repos, record every commit with its entries, set the refs (with their ref log)
        and write one audit entry per repo, in ONE transaction: all of it is recorded, or nothing.

        A commit that is already known keeps its entries (as in `record_commit`); an existing repo
        keeps its origin. A database failure raises HubMirrorError after the rollback.
        """
        now = utcnow()
        try:
            with write(self.engine) as c:
                for r in repos:
                    repo = self._repo_in(c, r.ref, r.origin, now)
                    for commit, entries in r.commits:
                        _insert_commit(c, repo.pk, commit, entries, now)
                    for name, sha in r.refs.items():
                        self._set_ref(c, repo, name, sha, reason, now)  # type: ignore[attr-defined]
                    c.execute(sa.insert(t.audit_log).values(
                        at=now, action=action, repo_type=r.ref.repo_type.value, repo_id=r.ref.repo_id,
                        detail=json.dumps(dict(r.audit), default=str)))
        except sa.exc.SQLAlchemyError as e:
            raise HubMirrorError(f"the catalog refused the import, nothing was recorded: "
                                 f"{getattr(e, 'orig', None) or e}") from e

    def _repo_in(self, c: sa.Connection, ref: RepoRef, origin: str, now: datetime) -> Any:
        """The RepoRow of `ref`, created inside the caller's transaction if needed."""
        where = (t.repos.c.repo_type == ref.repo_type.value, t.repos.c.repo_id == ref.repo_id)
        row = c.execute(sa.select(t.repos).where(*where)).first()
        if row is None:
            c.execute(insert(c, t.repos).values(repo_type=ref.repo_type.value, repo_id=ref.repo_id, created_at=now,
                                                origin=origin).on_conflict_do_nothing(
                index_elements=["repo_type", "repo_id"]))
            row = c.execute(sa.select(t.repos).where(*where)).one()
        return self._repo_row(row)  # type: ignore[attr-defined]

    def _repo_by_pk(self, pk: int) -> Any:
        """The RepoRow of a primary key (for internal passes over every repo)."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.repos).where(t.repos.c.id == pk)).first()
        return self._repo_row(r)  # type: ignore[attr-defined]


def _insert_commit(c: sa.Connection, repo: int, commit: Commit, entries: Iterable[Entry], now: datetime) -> bool:
    """Insert a commit and its entries unless the repo already has it (then False). The same rows
    as Catalog.record_commit writes."""
    created = c.execute(insert(c, t.commits).values(
        repo=repo, sha=commit.sha, parents=" ".join(commit.parents), tree=commit.tree, title=commit.title,
        message=commit.message, author=commit.author[:200],
        date=commit.date.astimezone(timezone.utc).replace(tzinfo=None), recorded_at=now,
    ).on_conflict_do_nothing(index_elements=["repo", "sha"])).rowcount
    if not created:
        return False
    batch: list[dict[str, Any]] = []
    for e in entries:
        batch.append({"repo": repo, "commit": commit.sha, "path": e.path, "parent": e.parent, "type": e.type,
                      "size": e.size, "oid": e.oid, "sha256": e.sha256, "lfs": e.lfs,
                      "pointer_size": e.pointer_size, "last_commit": e.last_commit})
        if len(batch) == 5000:
            c.execute(sa.insert(t.entries), batch)
            batch = []
    if batch:
        c.execute(sa.insert(t.entries), batch)
    return True


# -- the reads of retention, streamed ----------------------------------------------------------


def _stream(c: sa.Connection, q: Any) -> Iterator[Any]:
    """Rows of `q`, fetched STREAM_BATCH at a time (PostgreSQL: through a server-side cursor)."""
    yield from c.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(q)


def _commits(c: sa.Connection) -> Iterator[tuple[int, str, str]]:
    q = sa.select(t.commits.c.repo, t.repos.c.origin, t.commits.c.sha).join(t.repos, t.repos.c.id == t.commits.c.repo)
    for r in _stream(c, q):
        yield r.repo, r.origin, r.sha


def _refs(c: sa.Connection) -> Iterator[tuple[int, str, str]]:
    for r in _stream(c, sa.select(t.refs.c.repo, t.refs.c.name, t.refs.c.commit)):
        yield r.repo, r.name, r.commit


def _ref_log(c: sa.Connection) -> Iterator[tuple[int, str, str | None, datetime]]:
    q = sa.select(t.ref_log.c.repo, t.ref_log.c.name, t.ref_log.c.new_commit, t.ref_log.c.at).order_by(t.ref_log.c.id)
    for r in _stream(c, q):
        yield r.repo, r.name, r.new_commit, r.at


def _pins(c: sa.Connection) -> Iterator[tuple[int, str]]:
    for r in _stream(c, sa.select(t.pins.c.repo, t.pins.c.commit)):
        yield r.repo, r.commit


class RetentionView:
    """What retention reads, from one snapshot (`LifecycleQueries.retention_view`). Each method
    streams; consume one iterator before starting the next."""

    def __init__(self, c: sa.Connection) -> None:
        self._c = c

    def repos(self) -> Iterator[tuple[int, RepoRef, str]]:
        """(repo pk, repo, origin) of every repo."""
        q = sa.select(t.repos.c.id, t.repos.c.repo_type, t.repos.c.repo_id, t.repos.c.origin)
        for r in _stream(self._c, q):
            yield r.id, RepoRef(RepoType(r.repo_type), r.repo_id), r.origin

    def refs(self) -> Iterator[tuple[int, str, str]]:
        """(repo pk, ref name, commit) of every ref."""
        return _refs(self._c)

    def pins(self) -> Iterator[tuple[int, str]]:
        """(repo pk, commit) of every pin."""
        return _pins(self._c)

    def ref_log(self) -> Iterator[tuple[int, str, str | None, datetime]]:
        """(repo pk, ref name, new commit, at) of every ref move, oldest first."""
        return _ref_log(self._c)

    def commits(self) -> Iterator[tuple[int, str, str]]:
        """(repo pk, repo origin, commit sha) of every recorded commit."""
        return _commits(self._c)
