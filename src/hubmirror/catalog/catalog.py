"""Queries over the catalog. Synchronous SQLAlchemy Core: the api layer calls it from a
thread pool, the CLI directly. Every write that changes what readers see (a commit with
its entries and the refs that move to it) happens in one transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from ..errors import Conflict, RevisionNotFound
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, RepoType, is_commit_sha
from . import schema as t
from .access import AccessQueries
from .engine import create_engine, insert, normalise_url, write
from .events import EventQueries
from .lifecycle import LifecycleQueries
from .mirrors import MirrorQueries
from .proxy import ProxyQueries
from .schema import utcnow

# held (per transaction) while migrating a PostgreSQL catalog: replicas starting at once migrate one
# after the other, and all but the first find the schema at head
_MIGRATE_LOCK = int.from_bytes(hashlib.sha256(b"hubmirror:catalog:migrate").digest()[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class RepoRow:
    pk: int
    ref: RepoRef
    created_at: datetime
    private: bool
    gated: str | None
    origin: str  # local (imported here) | mirror (declared, synced) | proxy (pulled through on use)


@dataclass(frozen=True, slots=True)
class RefUpdate:
    name: str  # full ref name, e.g. refs/heads/main
    commit: str | None  # None deletes the ref
    expect: str | None | object = ...  # compare-and-swap: the commit the ref must still point at


def branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"


class Catalog(MirrorQueries, LifecycleQueries, ProxyQueries, AccessQueries, EventQueries):
    def __init__(self, url: str | sa.URL) -> None:
        """`sqlite:///path` or `postgresql://user:password@host/db` (`postgresql+psycopg://` too)."""
        u = normalise_url(url)
        self.url = u.render_as_string(hide_password=False)
        self.engine = create_engine(u)
        self.dialect = self.engine.dialect.name  # sqlite | postgresql

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(resources.files("hubmirror.catalog") / "migrations"))
        with write(self.engine) as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raises if the database does not answer."""
        with self.engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

    # -- repos -------------------------------------------------------------------------------

    def _repo_row(self, r: Any) -> RepoRow:
        return RepoRow(
            pk=r.id,
            ref=RepoRef(RepoType(r.repo_type), r.repo_id),
            created_at=r.created_at,
            private=bool(r.private),
            gated=r.gated,
            origin=r.origin,
        )

    def get_repo(self, ref: RepoRef) -> RepoRow | None:
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(t.repos).where(t.repos.c.repo_type == ref.repo_type.value, t.repos.c.repo_id == ref.repo_id)
            ).first()
        return self._repo_row(r) if r else None

    def ensure_repo(self, ref: RepoRef, origin: str = "local") -> RepoRow:
        row = self.get_repo(ref)
        if row:
            return row
        with write(self.engine) as c:
            # created concurrently (another thread, process or replica): theirs stands
            c.execute(insert(c, t.repos).values(
                repo_type=ref.repo_type.value, repo_id=ref.repo_id, created_at=utcnow(), origin=origin,
            ).on_conflict_do_nothing(index_elements=["repo_type", "repo_id"]))
        row = self.get_repo(ref)
        assert row is not None
        return row

    def set_visibility(self, repo: RepoRow, *, private: bool, gated: str | None) -> RepoRow:
        """A hosted repo made private, or an upstream repo found private or gated: from now on
        only the users and groups a rule names may read it."""
        if repo.private == private and repo.gated == gated:
            return repo
        with write(self.engine) as c:
            c.execute(sa.update(t.repos).where(t.repos.c.id == repo.pk).values(private=private, gated=gated))
        row = self.get_repo(repo.ref)
        assert row is not None
        return row

    def set_origin(self, repo: RepoRow, origin: str) -> RepoRow:
        with write(self.engine) as c:
            c.execute(sa.update(t.repos).where(t.repos.c.id == repo.pk).values(origin=origin))
        row = self.get_repo(repo.ref)
        assert row is not None
        return row

    def list_repos(self) -> list[RepoRow]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.repos).order_by(t.repos.c.repo_type, t.repos.c.repo_id)).all()
        return [self._repo_row(r) for r in rows]

    # -- revisions ---------------------------------------------------------------------------

    def resolve(self, repo: RepoRow, revision: str) -> str:
        """Branch, tag, full ref name or 40-hex commit -> commit sha; RevisionNotFound otherwise."""
        with self.engine.connect() as c:
            if is_commit_sha(revision):
                found = c.execute(
                    sa.select(t.commits.c.sha).where(t.commits.c.repo == repo.pk, t.commits.c.sha == revision)
                ).first()
                if found:
                    return revision
            names = [revision] if revision.startswith("refs/") else [f"refs/heads/{revision}", f"refs/tags/{revision}"]
            rows = dict(
                c.execute(
                    sa.select(t.refs.c.name, t.refs.c.commit).where(t.refs.c.repo == repo.pk, t.refs.c.name.in_(names))
                ).all()
            )
        for n in names:
            if n in rows:
                return str(rows[n])
        raise RevisionNotFound(f"Invalid rev id: {revision} (no such branch, tag or commit in {repo.ref})")

    def refs(self, repo: RepoRow) -> dict[str, str]:
        with self.engine.connect() as c:
            return dict(c.execute(sa.select(t.refs.c.name, t.refs.c.commit).where(t.refs.c.repo == repo.pk)).all())

    def ref_history(self, repo: RepoRow, name: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(t.ref_log).where(t.ref_log.c.repo == repo.pk)
        if name:
            q = q.where(t.ref_log.c.name == name)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(t.ref_log.c.id)).all()]

    # -- commits -----------------------------------------------------------------------------

    @staticmethod
    def _commit(r: Any) -> Commit:
        return Commit(
            sha=r.sha,
            parents=r.parents.split() if r.parents else [],
            title=r.title,
            message=r.message,
            author=r.author,
            date=r.date.replace(tzinfo=timezone.utc),
            tree=r.tree,
        )

    def get_commit(self, repo: RepoRow, sha: str) -> Commit | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.commits).where(t.commits.c.repo == repo.pk, t.commits.c.sha == sha)).first()
        return self._commit(r) if r else None

    def log(self, repo: RepoRow, sha: str) -> list[Commit]:
        """Every ancestor of `sha` known to the catalog (itself first), newest first."""
        with self.engine.connect() as c:
            known = {r.sha: self._commit(r) for r in c.execute(sa.select(t.commits).where(t.commits.c.repo == repo.pk))}
        seen: set[str] = set()
        stack = [sha]
        out: list[Commit] = []
        while stack:
            s = stack.pop()
            if s in seen or s not in known:
                continue
            seen.add(s)
            out.append(known[s])
            stack.extend(known[s].parents)
        out.sort(key=lambda cm: (cm.sha != sha, -cm.date.timestamp()))
        return out

    def record_commit(
        self,
        repo: RepoRow,
        commit: Commit,
        entries: Sequence[Entry],
        ref_updates: Iterable[RefUpdate] = (),
        reason: str = "",
    ) -> None:
        """Record a commit with all its entries and move refs to it, in one transaction.

        Recording a commit that is already known only moves the refs.
        """
        now = utcnow()
        with write(self.engine) as c:
            # insert first: a commit recorded concurrently (two replicas filling the same repo) is
            # recorded once, with the entries of whoever inserted it
            created = c.execute(
                insert(c, t.commits).values(
                    repo=repo.pk,
                    sha=commit.sha,
                    parents=" ".join(commit.parents),
                    tree=commit.tree,
                    title=commit.title,
                    message=commit.message,
                    author=commit.author[:200],
                    date=commit.date.astimezone(timezone.utc).replace(tzinfo=None),
                    recorded_at=now,
                ).on_conflict_do_nothing(index_elements=["repo", "sha"])
            ).rowcount
            if created:
                rows = [
                    {
                        "repo": repo.pk,
                        "commit": commit.sha,
                        "path": e.path,
                        "parent": e.parent,
                        "type": e.type,
                        "size": e.size,
                        "oid": e.oid,
                        "sha256": e.sha256,
                        "lfs": e.lfs,
                        "pointer_size": e.pointer_size,
                        "last_commit": e.last_commit,
                    }
                    for e in entries
                ]
                for i in range(0, len(rows), 5000):
                    c.execute(sa.insert(t.entries), rows[i : i + 5000])
            for u in ref_updates:
                self._set_ref(c, repo, u.name, u.commit, reason, now, u.expect)

    def set_ref(self, repo: RepoRow, name: str, commit: str | None, reason: str = "") -> None:
        with write(self.engine) as c:
            self._set_ref(c, repo, name, commit, reason, utcnow())

    def _set_ref(
        self,
        c: sa.Connection,
        repo: RepoRow,
        name: str,
        commit: str | None,
        reason: str,
        now: datetime,
        expect: str | None | object = ...,
    ) -> None:
        where = (t.refs.c.repo == repo.pk, t.refs.c.name == name)
        for _ in range(3):
            # FOR UPDATE (PostgreSQL; SQLite has one writer at a time): a concurrent move of this ref
            # waits for this transaction, then compares against what it recorded
            old = c.execute(sa.select(t.refs.c.commit).where(*where).with_for_update()).scalar()
            if expect is not ... and old != expect:
                raise Conflict(f"{name} of {repo.ref} moved to {old} while this write expected {expect}; retry")
            if old == commit:
                return
            if old is None:
                created = c.execute(insert(c, t.refs).values(repo=repo.pk, name=name, commit=commit, updated_at=now)
                                    .on_conflict_do_nothing(index_elements=["repo", "name"])).rowcount
                if not created:
                    continue  # created concurrently: look again, under its lock
            elif commit is None:
                c.execute(sa.delete(t.refs).where(*where))
            else:
                c.execute(sa.update(t.refs).where(*where).values(commit=commit, updated_at=now))
            c.execute(
                sa.insert(t.ref_log).values(repo=repo.pk, name=name, old_commit=old, new_commit=commit, at=now,
                                            reason=reason)
            )
            return
        raise Conflict(f"{name} of {repo.ref} kept moving under concurrent writers; retry")

    # -- entries -----------------------------------------------------------------------------

    @staticmethod
    def _entry(r: Any) -> Entry:
        return Entry(
            path=r.path,
            type=r.type,
            oid=r.oid,
            size=r.size,
            sha256=r.sha256,
            lfs=bool(r.lfs),
            pointer_size=r.pointer_size,
            last_commit=r.last_commit,
        )

    def get_entry(self, repo: RepoRow, commit: str, path: str) -> Entry | None:
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(t.entries).where(
                    t.entries.c.repo == repo.pk, t.entries.c.commit == commit, t.entries.c.path == path
                )
            ).first()
        return self._entry(r) if r else None

    def get_entries(self, repo: RepoRow, commit: str, paths: Sequence[str]) -> list[Entry]:
        out: list[Entry] = []
        with self.engine.connect() as c:
            for i in range(0, len(paths), 500):
                rows = c.execute(
                    sa.select(t.entries)
                    .where(t.entries.c.repo == repo.pk, t.entries.c.commit == commit, t.entries.c.path.in_(paths[i : i + 500]))
                    .order_by(t.entries.c.path)
                ).all()
                out.extend(self._entry(r) for r in rows)
        return out

    def list_entries(
        self,
        repo: RepoRow,
        commit: str,
        *,
        under: str = "",
        recursive: bool = False,
        after: str | None = None,
        limit: int | None = None,
        files_only: bool = False,
    ) -> list[Entry]:
        """Entries below folder `under` ("" = root), ordered by path, starting after `after`."""
        e = t.entries.c
        q = sa.select(t.entries).where(e.repo == repo.pk, e.commit == commit)
        # byte order on both databases: SQLite's BINARY collation, and on PostgreSQL the "C" collation
        # of entries.path (migration 0007), so that ORDER BY, these ranges and the `after` cursor
        # agree and use the primary key's index
        if recursive:
            if under:
                # every path that starts with "under/": "/" is 0x2F and "0" is 0x30
                q = q.where(e.path > under + "/", e.path < under + "0")
        else:
            q = q.where(e.parent == under)
        if files_only:
            q = q.where(e.type == "file")
        if after is not None:
            q = q.where(e.path > after)
        q = q.order_by(e.path)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as c:
            return [self._entry(r) for r in c.execute(q).all()]

    def commit_titles(self, repo: RepoRow, shas: Iterable[str]) -> dict[str, Commit]:
        shas = list(set(shas))
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.commits).where(t.commits.c.repo == repo.pk, t.commits.c.sha.in_(shas))).all()
        return {r.sha: self._commit(r) for r in rows}

    def sha256_for_oid(self, oid: str) -> str | None:
        """A stored regular file with this git blob id, so a sync can reuse it without downloading."""
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(t.entries.c.sha256)
                .where(t.entries.c.oid == oid, t.entries.c.type == "file", t.entries.c.lfs == sa.false())
                .limit(1)
            ).first()
        return str(r.sha256) if r and r.sha256 else None
