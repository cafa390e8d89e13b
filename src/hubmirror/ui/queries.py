"""Read-only catalog queries of the web UI, on the Catalog's engine (SQLAlchemy Core; SQLite and
PostgreSQL alike). Each page costs a bounded number of statements whatever the size of the
mirror: the repo list is one query over the repos with their marks, a folder one page by the
entries' (repo, commit, parent, path) index. Nothing here writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..catalog import Catalog, MirrorRow, RepoRow
from ..catalog import schema as t
from ..model.access import Role
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef, RepoType, is_commit_sha

KINDS = {"local": "hosted", "mirror": "mirrored", "proxy": "pulled through"}


@dataclass(frozen=True, slots=True)
class RepoSummary:
    """A repo as the list and the overview show it."""

    row: RepoRow
    updated_at: datetime | None  # the last move of one of its refs
    pins: int
    gone_since: datetime | None
    mirror: MirrorRow | None  # its declaration, if it is a declared mirror
    stale: bool  # the upstream had a commit (at the last check) that is not mirrored yet
    failing: bool  # the last check or sync of its mirror failed

    @property
    def kind(self) -> str:
        return KINDS.get(self.row.origin, self.row.origin)

    @property
    def frozen(self) -> bool:
        return self.mirror is not None and self.mirror.spec.frozen


def _mirror_row(r: Any) -> MirrorRow:
    return MirrorRow(
        spec=MirrorSpec.model_validate_json(r.spec), source=r.source, next_run_at=r.next_run_at,
        last_check_at=r.last_check_at, last_sync_at=r.last_sync_at,
        upstream=json.loads(r.upstream) if r.upstream else {}, last_error=r.last_error,
        last_error_at=r.last_error_at,
    )


def mirrored_commit(refs: dict[str, str], revision: str) -> str | None:
    """Our commit for a revision a mirror follows (as `hubmirror status` matches them)."""
    if is_commit_sha(revision):
        return revision
    return refs.get(f"refs/heads/{revision}") or refs.get(f"refs/tags/{revision}") or refs.get(revision)


def behind(mirror: MirrorRow, refs: dict[str, str]) -> dict[str, str]:
    """revision -> upstream commit, for each revision whose upstream commit (at the last check)
    is not the one mirrored."""
    return {rev: up for rev, up in mirror.upstream.items() if mirrored_commit(refs, rev) != up}


def repo_summaries(catalog: Catalog) -> list[RepoSummary]:
    """Every repo with its marks, ordered by type and id: three statements in all."""
    r, m, g = t.repos, t.mirrors, t.repo_gone
    moved = sa.select(t.refs.c.repo, sa.func.max(t.refs.c.updated_at).label("updated_at")) \
        .group_by(t.refs.c.repo).subquery()
    pinned = sa.select(t.pins.c.repo, sa.func.count().label("n")).group_by(t.pins.c.repo).subquery()
    q = (
        sa.select(r, moved.c.updated_at, pinned.c.n.label("pins"), g.c.since.label("gone_since"),
                  m.c.spec, m.c.source, m.c.next_run_at, m.c.last_check_at, m.c.last_sync_at, m.c.upstream,
                  m.c.last_error, m.c.last_error_at)
        .select_from(r.outerjoin(moved, moved.c.repo == r.c.id).outerjoin(pinned, pinned.c.repo == r.c.id)
                     .outerjoin(g, g.c.repo == r.c.id)
                     .outerjoin(m, sa.and_(m.c.repo_type == r.c.repo_type, m.c.repo_id == r.c.repo_id)))
        .order_by(r.c.repo_type, r.c.repo_id)
    )
    mirror_refs = (
        sa.select(t.refs.c.repo, t.refs.c.name, t.refs.c.commit)
        .select_from(t.refs.join(r, r.c.id == t.refs.c.repo)
                     .join(m, sa.and_(m.c.repo_type == r.c.repo_type, m.c.repo_id == r.c.repo_id)))
    )
    with catalog.engine.connect() as c:
        rows = c.execute(q).all()
        refs: dict[int, dict[str, str]] = {}
        for x in c.execute(mirror_refs):
            refs.setdefault(x.repo, {})[x.name] = x.commit
    out = []
    for x in rows:
        row = RepoRow(x.id, RepoRef(RepoType(x.repo_type), x.repo_id), x.created_at, bool(x.private), x.gated,
                      x.origin)
        mirror = _mirror_row(x) if x.spec is not None else None
        out.append(RepoSummary(
            row=row, updated_at=x.updated_at, pins=int(x.pins or 0), gone_since=x.gone_since, mirror=mirror,
            stale=bool(mirror and behind(mirror, refs.get(row.pk, {}))),
            failing=bool(mirror and mirror.last_error),
        ))
    return out


def mirror_refs(catalog: Catalog) -> dict[RepoRef, dict[str, str]]:
    """The refs of every repo that is a declared mirror (for the admin's mirror list)."""
    r, m = t.repos, t.mirrors
    q = (sa.select(r.c.repo_type, r.c.repo_id, t.refs.c.name, t.refs.c.commit)
         .select_from(t.refs.join(r, r.c.id == t.refs.c.repo)
                      .join(m, sa.and_(m.c.repo_type == r.c.repo_type, m.c.repo_id == r.c.repo_id))))
    out: dict[RepoRef, dict[str, str]] = {}
    with catalog.engine.connect() as c:
        for x in c.execute(q):
            out.setdefault(RepoRef(RepoType(x.repo_type), x.repo_id), {})[x.name] = x.commit
    return out


def running_syncs(catalog: Catalog) -> list[dict[str, Any]]:
    """Sync runs the catalog records as running (on any replica), oldest first."""
    s = t.sync_runs.c
    q = (sa.select(s.id, s.repo_type, s.repo_id, s.trigger, s.started_at)
         .where(s.status == "running").order_by(s.id))
    with catalog.engine.connect() as c:
        return [dict(x._mapping) for x in c.execute(q)]


# -- one repo -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefInfo:
    name: str  # full name: refs/heads/main
    commit: str
    updated_at: datetime
    title: str
    date: datetime | None

    @property
    def short(self) -> str:
        for prefix in ("refs/heads/", "refs/tags/"):
            if self.name.startswith(prefix):
                return self.name[len(prefix):]
        return self.name

    @property
    def kind(self) -> str:
        return "branch" if self.name.startswith("refs/heads/") else "tag" if self.name.startswith("refs/tags/") \
            else "ref"


def repo_refs(catalog: Catalog, repo: RepoRow) -> list[RefInfo]:
    """The refs of a repo with the title and date of their commits: branches, then tags, then others."""
    f, cm = t.refs.c, t.commits.c
    q = (sa.select(f.name, f.commit, f.updated_at, cm.title, cm.date)
         .select_from(t.refs.outerjoin(t.commits, sa.and_(cm.repo == f.repo, cm.sha == f.commit)))
         .where(f.repo == repo.pk))
    with catalog.engine.connect() as c:
        rows = [RefInfo(x.name, x.commit, x.updated_at, x.title or "", x.date) for x in c.execute(q)]
    order = {"branch": 0, "tag": 1, "ref": 2}
    return sorted(rows, key=lambda x: (order[x.kind], x.short != "main", x.name))


def repo_marks(catalog: Catalog, repo: RepoRow) -> dict[str, Any]:
    """Its gone-upstream mark (since, message) and its pins."""
    p = t.pins.c
    with catalog.engine.connect() as c:
        gone = c.execute(sa.select(t.repo_gone.c.since, t.repo_gone.c.message)
                         .where(t.repo_gone.c.repo == repo.pk)).first()
        pins = [dict(x._mapping) for x in c.execute(
            sa.select(p.commit, p.revision, p.note, p.created_at).where(p.repo == repo.pk).order_by(p.created_at))]
    return {"gone": dict(gone._mapping) if gone else None, "pins": pins}


def commit_totals(catalog: Catalog, repo: RepoRow, commit: str) -> tuple[int, int]:
    """(files, bytes) of a commit."""
    e = t.entries.c
    q = (sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(e.size), 0))
         .where(e.repo == repo.pk, e.commit == commit, e.type == "file"))
    with catalog.engine.connect() as c:
        n, size = c.execute(q).one()
    return int(n), int(size)


def folder_count(catalog: Catalog, repo: RepoRow, commit: str, folder: str) -> int:
    """Files and folders directly in `folder` ("" = root)."""
    e = t.entries.c
    q = sa.select(sa.func.count()).where(e.repo == repo.pk, e.commit == commit, e.parent == folder)
    with catalog.engine.connect() as c:
        return int(c.execute(q).scalar() or 0)


def commit_count(catalog: Catalog, repo: RepoRow) -> int:
    return catalog.count_commits(repo.pk)


# -- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenState:
    """What a UI session needs of the token it was opened with."""

    id: int
    hash: str
    name: str
    user: str
    groups: frozenset[str]
    role: Role
    repos: tuple[str, ...] | None
    expires_at: datetime | None
    revoked_at: datetime | None


def token_state(catalog: Catalog, token_id: int) -> TokenState | None:
    tk, u, gm = t.tokens.c, t.users.c, t.group_members.c
    q = (sa.select(tk.id, tk.hash, tk.name, tk.role, tk.repos, tk.expires_at, tk.revoked_at, tk.user,
                   u.name.label("user_name"))
         .select_from(t.tokens.join(t.users, u.id == tk.user)).where(tk.id == token_id))
    with catalog.engine.connect() as c:
        x = c.execute(q).first()
        if x is None:
            return None
        groups = frozenset(g for (g,) in c.execute(sa.select(gm.group).where(gm.user == x.user)))
    repos = tuple(json.loads(x.repos)) if x.repos else None
    return TokenState(x.id, x.hash, x.name, x.user_name, groups, Role(x.role), repos, x.expires_at, x.revoked_at)
