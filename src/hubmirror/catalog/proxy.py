"""Catalog queries of the pull-through cache (mixed into Catalog): upstream metadata, cached API
answers, blob accesses for LRU eviction, and the journal of fills that sent unverified bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .schema import utcnow


class ProxyQueries:
    engine: sa.Engine

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
            c.execute(sa.insert(t.api_cache).values(key=key, body=body, link=link, fetched_at=utcnow()))

    def api_cache_prune(self, prefix: str, keep: int) -> int:
        """Keep only the `keep` newest cached answers whose key starts with `prefix`."""
        a = t.api_cache.c
        with self.engine.begin() as c:
            cutoff = c.execute(sa.select(a.fetched_at).where(a.key.startswith(prefix, autoescape=True))
                               .order_by(a.fetched_at.desc()).offset(keep).limit(1)).scalar()
            if cutoff is None:
                return 0
            return int(c.execute(sa.delete(t.api_cache).where(a.key.startswith(prefix, autoescape=True),
                                                               a.fetched_at <= cutoff)).rowcount)

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

    def sha256_for_oids(self, oids: Iterable[str]) -> dict[str, str]:
        """For many git blob ids at once: the sha256 of a stored regular file with that id."""
        out: dict[str, str] = {}
        wanted = sorted(set(oids))
        with self.engine.connect() as c:
            for i in range(0, len(wanted), 500):
                rows = c.execute(
                    sa.select(t.entries.c.oid, t.entries.c.sha256)
                    .where(t.entries.c.oid.in_(wanted[i : i + 500]), t.entries.c.lfs == sa.false(),
                           t.entries.c.sha256.is_not(None))
                ).all()
                out.update({r.oid: r.sha256 for r in rows})
        return out

    def blob_wanted(self, sha256: str | None, oid: str) -> bool:
        """Does a pinned commit, or a hosted or declared mirror's commit, list this blob? (A fill
        of such a blob goes on when its clients leave.)"""
        e = t.entries.c
        match = e.sha256 == sha256 if sha256 else sa.and_(e.oid == oid, e.lfs == sa.false())
        pinned = (sa.select(e.commit).join(t.pins, sa.and_(t.pins.c.repo == e.repo, t.pins.c.commit == e.commit))
                  .where(match).limit(1))
        kept = (sa.select(e.commit).join(t.repos, t.repos.c.id == e.repo)
                .where(match, t.repos.c.origin.in_(["local", "mirror"])).limit(1))
        with self.engine.connect() as c:
            return c.execute(pinned).first() is not None or c.execute(kept).first() is not None

    # -- fills that sent unverified bytes ---------------------------------------------------

    def fill_started(self, key: str, spool: str | None) -> int:
        with self.engine.begin() as c:
            res = c.execute(sa.insert(t.unverified_fills).values(key=key, started_at=utcnow(), spool=spool))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def fill_forget(self, fill_id: int) -> None:
        """The fill verified, or no byte of it reached a client, or its bytes proved right."""
        with self.engine.begin() as c:
            c.execute(sa.delete(t.unverified_fills).where(t.unverified_fills.c.id == fill_id))

    def fill_failed(self, fill_id: int, prefix_len: int, prefix_sha256: str, sent_end: int | None) -> None:
        """The fill ended unverified after sending bytes: remember what it had written and how far
        its bytes reached clients."""
        with self.engine.begin() as c:
            c.execute(sa.update(t.unverified_fills).where(t.unverified_fills.c.id == fill_id)
                      .values(prefix_len=prefix_len, prefix_sha256=prefix_sha256, sent_end=sent_end))

    def crashed_fills(self) -> list[tuple[int, str]]:
        """(id, spool file name) of fills whose process died: nothing recorded what they wrote."""
        u = t.unverified_fills.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(u.id, u.spool).where(u.prefix_sha256.is_(None), u.spool.is_not(None))).all()
        return [(r.id, r.spool) for r in rows]

    def unverified_fills(self, max_age: float) -> list[tuple[int, str, datetime, int | None, str | None, int | None]]:
        """(id, key, started_at, prefix_len, prefix_sha256, sent_end) of fills that sent bytes and
        did not verify (NULLs: their process died), dropping those older than `max_age` seconds."""
        cutoff = utcnow() - timedelta(seconds=max_age)
        u = t.unverified_fills.c
        with self.engine.begin() as c:
            c.execute(sa.delete(t.unverified_fills).where(u.started_at < cutoff))
            rows = c.execute(sa.select(u.id, u.key, u.started_at, u.prefix_len, u.prefix_sha256, u.sent_end)).all()
        return [(r.id, r.key, r.started_at, r.prefix_len, r.prefix_sha256, r.sent_end) for r in rows]
