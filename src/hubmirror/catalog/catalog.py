"""Queries over the catalog. Synchronous SQLAlchemy Core: the api layer calls it from a
thread pool, the CLI directly. Every write that changes what readers see (a commit with
its entries and the refs that move to it) happens in one transaction."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from ..errors import Conflict, InsufficientStorage, RevisionNotFound
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, RepoType, is_commit_sha
from . import schema as t
from .access import AccessQueries
from .lifecycle import LifecycleQueries
from .mirrors import MirrorQueries
from .proxy import ProxyQueries
from .schema import utcnow


def _is_disk_full(e: BaseException, db_dir: str | None) -> bool:
    """SQLite's SQLITE_FULL, or an I/O error on a disk with no space left (opening a WAL database
    must size its -shm file: SQLITE_IOERR_SHMSIZE); PostgreSQL's disk_full (53100)."""
    if "database or disk is full" in str(e):
        return True
    if getattr(e, "sqlstate", None) == "53100" or getattr(e, "pgcode", None) == "53100":
        return True
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == 10 and db_dir is not None:  # SQLITE_IOERR_*
        try:
            return shutil.disk_usage(db_dir).free < 1 << 20
        except OSError:
            return False
    return False


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


class Catalog(MirrorQueries, LifecycleQueries, ProxyQueries, AccessQueries):
    def __init__(self, url: str) -> None:
        self.url = url
        is_sqlite = url.startswith("sqlite")
        self.engine = sa.create_engine(
            url,
            future=True,
            connect_args={"timeout": 60, "check_same_thread": False} if is_sqlite else {},
            pool_pre_ping=not is_sqlite,
        )

        db_dir = os.path.dirname(self.engine.url.database or "") or "." if is_sqlite else None

        @sa.event.listens_for(self.engine, "handle_error")
        def _disk_full(ctx: Any) -> BaseException | None:
            if _is_disk_full(ctx.original_exception, db_dir):
                # the answer callers and clients understand: 507, "InsufficientStorage"
                return InsufficientStorage("the catalog cannot be written: its disk is full (free some space; "
                                           "everything stored keeps being served)")
            return None

        if is_sqlite:

            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")  # a committed transaction survives power loss
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(resources.files("hubmirror.catalog") / "migrations"))
        with self.engine.begin() as conn:
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
        try:
            with self.engine.begin() as c:
                c.execute(
                    sa.insert(t.repos).values(
                        repo_type=ref.repo_type.value, repo_id=ref.repo_id, created_at=utcnow(), origin=origin
                    )
                )
        except sa.exc.IntegrityError:
            pass  # created concurrently
        row = self.get_repo(ref)
        assert row is not None
        return row

    def set_visibility(self, repo: RepoRow, *, private: bool, gated: str | None) -> RepoRow:
        """A hosted repo made private, or an upstream repo found private or gated: from now on
        only the users and groups a rule names may read it."""
        if repo.private == private and repo.gated == gated:
            return repo
        with self.engine.begin() as c:
            c.execute(sa.update(t.repos).where(t.repos.c.id == repo.pk).values(private=private, gated=gated))
        row = self.get_repo(repo.ref)
        assert row is not None
        return row

    def set_origin(self, repo: RepoRow, origin: str) -> RepoRow:
        with self.engine.begin() as c:
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
        with self.engine.begin() as c:
            exists = c.execute(
                sa.select(t.commits.c.sha).where(t.commits.c.repo == repo.pk, t.commits.c.sha == commit.sha)
            ).first()
            if not exists:
                c.execute(
                    sa.insert(t.commits).values(
                        repo=repo.pk,
                        sha=commit.sha,
                        parents=" ".join(commit.parents),
                        tree=commit.tree,
                        title=commit.title,
                        message=commit.message,
                        author=commit.author,
                        date=commit.date.astimezone(timezone.utc).replace(tzinfo=None),
                        recorded_at=now,
                    )
                )
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
        with self.engine.begin() as c:
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
        old = c.execute(sa.select(t.refs.c.commit).where(t.refs.c.repo == repo.pk, t.refs.c.name == name)).scalar()
        if expect is not ... and old != expect:
            raise Conflict(f"{name} of {repo.ref} moved to {old} while this write expected {expect}; retry")
        if old == commit:
            return
        if old is None:
            c.execute(sa.insert(t.refs).values(repo=repo.pk, name=name, commit=commit, updated_at=now))
        elif commit is None:
            c.execute(sa.delete(t.refs).where(t.refs.c.repo == repo.pk, t.refs.c.name == name))
        else:
            c.execute(
                sa.update(t.refs)
                .where(t.refs.c.repo == repo.pk, t.refs.c.name == name)
                .values(commit=commit, updated_at=now)
            )
        c.execute(
            sa.insert(t.ref_log).values(repo=repo.pk, name=name, old_commit=old, new_commit=commit, at=now, reason=reason)
        )

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
        if recursive:
            if under:
                # every path that starts with "under/": "/" is 0x2F and "0" is 0x30 (binary collation)
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
