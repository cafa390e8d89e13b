"""Catalog queries for declared mirrors and sync history (mixed into Catalog)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from . import schema as t


def _now() -> datetime:
    from .catalog import utcnow

    return utcnow()


@dataclass(frozen=True, slots=True)
class MirrorRow:
    spec: MirrorSpec
    source: str
    next_run_at: datetime | None
    last_check_at: datetime | None
    last_sync_at: datetime | None
    upstream: dict[str, str]
    last_error: str | None
    last_error_at: datetime | None


def _mirror(r: Any) -> MirrorRow:
    return MirrorRow(
        spec=MirrorSpec.model_validate_json(r.spec),
        source=r.source,
        next_run_at=r.next_run_at,
        last_check_at=r.last_check_at,
        last_sync_at=r.last_sync_at,
        upstream=json.loads(r.upstream) if r.upstream else {},
        last_error=r.last_error,
        last_error_at=r.last_error_at,
    )


class MirrorQueries:
    engine: sa.Engine

    def _where(self, ref: RepoRef) -> Any:
        return sa.and_(t.mirrors.c.repo_type == ref.repo_type.value, t.mirrors.c.repo_id == ref.repo_id)

    def upsert_mirror(self, spec: MirrorSpec, source: str) -> None:
        with self.engine.begin() as c:
            row = c.execute(sa.select(t.mirrors.c.id).where(self._where(spec.ref))).first()
            if row:
                c.execute(
                    sa.update(t.mirrors).where(t.mirrors.c.id == row.id).values(spec=spec.model_dump_json(), source=source)
                )
            else:
                c.execute(
                    sa.insert(t.mirrors).values(
                        repo_type=spec.type.value, repo_id=spec.repo, spec=spec.model_dump_json(), source=source,
                        created_at=_now(),
                    )
                )

    def remove_mirror(self, ref: RepoRef) -> bool:
        with self.engine.begin() as c:
            return bool(c.execute(sa.delete(t.mirrors).where(self._where(ref))).rowcount)

    def get_mirror(self, ref: RepoRef) -> MirrorRow | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.mirrors).where(self._where(ref))).first()
        return _mirror(r) if r else None

    def list_mirrors(self) -> list[MirrorRow]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.mirrors).order_by(t.mirrors.c.repo_type, t.mirrors.c.repo_id)).all()
        return [_mirror(r) for r in rows]

    def prune_config_mirrors(self, keep: set[RepoRef]) -> None:
        """Forget mirrors that came from the config file and are no longer in it."""
        for m in self.list_mirrors():
            if m.source == "config" and m.spec.ref not in keep:
                self.remove_mirror(m.spec.ref)

    def update_mirror_state(self, ref: RepoRef, **values: Any) -> None:
        if "upstream" in values and values["upstream"] is not None:
            values["upstream"] = json.dumps(values["upstream"])
        with self.engine.begin() as c:
            c.execute(sa.update(t.mirrors).where(self._where(ref)).values(**values))

    # -- sync runs --------------------------------------------------------------------------

    def start_run(self, ref: RepoRef, trigger: str) -> int:
        with self.engine.begin() as c:
            res = c.execute(
                sa.insert(t.sync_runs).values(
                    repo_type=ref.repo_type.value, repo_id=ref.repo_id, trigger=trigger, status="running",
                    started_at=_now(),
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def close_interrupted_runs(self, ref: RepoRef) -> int:
        """Runs still marked running while we hold the repo's sync lock died (kill -9, power loss)."""
        with self.engine.begin() as c:
            return int(c.execute(
                sa.update(t.sync_runs)
                .where(t.sync_runs.c.repo_type == ref.repo_type.value, t.sync_runs.c.repo_id == ref.repo_id,
                       t.sync_runs.c.status == "running")
                .values(status="interrupted", error="the process running it stopped")
            ).rowcount)

    def finish_run(self, run_id: int, **values: Any) -> None:
        if "commits" in values:
            values["commits"] = json.dumps(values["commits"])
        with self.engine.begin() as c:
            c.execute(sa.update(t.sync_runs).where(t.sync_runs.c.id == run_id).values(finished_at=_now(), **values))

    def runs(self, ref: RepoRef, limit: int = 20) -> list[dict[str, Any]]:
        q = (
            sa.select(t.sync_runs)
            .where(t.sync_runs.c.repo_type == ref.repo_type.value, t.sync_runs.c.repo_id == ref.repo_id)
            .order_by(t.sync_runs.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as c:
            out = []
            for r in c.execute(q).all():
                d = dict(r._mapping)
                d["commits"] = json.loads(d["commits"]) if d["commits"] else {}
                out.append(d)
            return out

    def sha256_for_oid(self, oid: str) -> str | None:
        """A stored regular file with this git blob id, so a sync can reuse it without downloading."""
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(t.entries.c.sha256)
                .where(t.entries.c.oid == oid, t.entries.c.type == "file", t.entries.c.lfs == sa.false())
                .limit(1)
            ).first()
        return str(r.sha256) if r and r.sha256 else None

    # -- pull-through -------------------------------------------------------------------------

    def save_upstream_info(self, repo_pk: int, commit: str, info: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            exists = c.execute(
                sa.select(t.upstream_info.c.commit).where(t.upstream_info.c.repo == repo_pk, t.upstream_info.c.commit == commit)
            ).first()
            if not exists:
                c.execute(sa.insert(t.upstream_info).values(repo=repo_pk, commit=commit, info=json.dumps(info)))

    def upstream_info_for(self, repo_pk: int, commit: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(t.upstream_info.c.info).where(t.upstream_info.c.repo == repo_pk, t.upstream_info.c.commit == commit)
            ).first()
        return json.loads(r.info) if r else None

    def api_cache_get(self, key: str) -> tuple[bytes, str | None, datetime] | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.api_cache).where(t.api_cache.c.key == key)).first()
        return (bytes(r.body), r.link, r.fetched_at) if r else None

    def api_cache_put(self, key: str, body: bytes, link: str | None) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(t.api_cache).where(t.api_cache.c.key == key))
            c.execute(sa.insert(t.api_cache).values(key=key, body=body, link=link, fetched_at=_now()))

    def fill_sha256(self, oid: str, sha256: str) -> None:
        """A regular file's bytes were fetched: every entry with that git oid now knows its sha256."""
        with self.engine.begin() as c:
            c.execute(
                sa.update(t.entries)
                .where(t.entries.c.oid == oid, t.entries.c.lfs == sa.false(), t.entries.c.sha256.is_(None))
                .values(sha256=sha256)
            )

    def touch_blobs(self, accesses: dict[str, tuple[int, bool, datetime]]) -> None:
        """Record the last access of blobs (sha256 -> (size, filled by pull-through, when))."""
        if not accesses:
            return
        with self.engine.begin() as c:
            known = {
                r.sha256: bool(r.proxied)
                for r in c.execute(sa.select(t.blob_access).where(t.blob_access.c.sha256.in_(list(accesses)))).all()
            }
            for sha, (size, proxied, when) in accesses.items():
                if sha in known:
                    c.execute(
                        sa.update(t.blob_access).where(t.blob_access.c.sha256 == sha)
                        .values(last_access=when, proxied=known[sha] and proxied)
                    )
                else:
                    c.execute(sa.insert(t.blob_access).values(sha256=sha, size=size, proxied=proxied, last_access=when))

    def eviction_candidates(self, limit: int = 1000) -> list[tuple[str, int]]:
        """Blobs filled by pull-through, least recently used first, that no hosted or declared
        mirror's commit references (those are never evicted)."""
        protected = sa.union(
            sa.select(t.entries.c.sha256)
            .join(t.repos, t.repos.c.id == t.entries.c.repo)
            .where(t.repos.c.origin.in_(["local", "mirror"]), t.entries.c.sha256.is_not(None)),
            sa.select(t.entries.c.sha256)
            .join(t.pins, sa.and_(t.pins.c.repo == t.entries.c.repo, t.pins.c.commit == t.entries.c.commit))
            .where(t.entries.c.sha256.is_not(None)),
        )
        q = (
            sa.select(t.blob_access.c.sha256, t.blob_access.c.size)
            .where(t.blob_access.c.proxied == sa.true(), t.blob_access.c.sha256.not_in(sa.select(protected.subquery())))
            .order_by(t.blob_access.c.last_access)
            .limit(limit)
        )
        with self.engine.connect() as c:
            return [(r.sha256, int(r.size)) for r in c.execute(q).all()]

    def proxied_bytes(self) -> int:
        with self.engine.connect() as c:
            v = c.execute(sa.select(sa.func.coalesce(sa.func.sum(t.blob_access.c.size), 0))
                          .where(t.blob_access.c.proxied == sa.true())).scalar()
        return int(v or 0)

    def forget_blob(self, sha256: str) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(t.blob_access).where(t.blob_access.c.sha256 == sha256))
