"""Catalog queries of the pull-through cache (mixed into Catalog): upstream metadata, cached API
answers, blob accesses for LRU eviction, and the journal of fills that sent unverified bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .engine import insert, prefix_end, write
from .schema import utcnow

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class ProxyQueries:
    engine: sa.Engine

    def save_upstream_info(self, repo_pk: int, commit: str, info: dict[str, Any]) -> None:
        with write(self.engine) as c:
            c.execute(insert(c, t.upstream_info).values(repo=repo_pk, commit=commit, info=json.dumps(info))
                      .on_conflict_do_nothing(index_elements=["repo", "commit"]))

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
        with write(self.engine) as c:
            ins = insert(c, t.api_cache).values(key=key, body=body, link=link, fetched_at=utcnow())
            c.execute(ins.on_conflict_do_update(index_elements=["key"], set_={
                "body": ins.excluded.body, "link": ins.excluded.link, "fetched_at": ins.excluded.fetched_at}))

    def api_cache_prune(self, prefix: str, keep: int) -> int:
        """Keep only the `keep` newest cached answers whose key starts with `prefix` (case-sensitive:
        a byte range, not LIKE, which SQLite compares without case)."""
        a = t.api_cache.c
        starts = sa.and_(a.key >= prefix, a.key < prefix_end(prefix)) if prefix else sa.true()
        with write(self.engine) as c:
            cutoff = c.execute(sa.select(a.fetched_at).where(starts)
                               .order_by(a.fetched_at.desc()).offset(keep).limit(1)).scalar()
            if cutoff is None:
                return 0
            return int(c.execute(sa.delete(t.api_cache).where(starts, a.fetched_at <= cutoff)).rowcount)

    def fill_sha256(self, oid: str, sha256: str) -> None:
        """A regular file's bytes were fetched: every entry with that git oid now knows its sha256."""
        with write(self.engine) as c:
            c.execute(
                sa.update(t.entries)
                .where(t.entries.c.oid == oid, t.entries.c.lfs == sa.false(), t.entries.c.sha256.is_(None))
                .values(sha256=sha256)
            )

    def touch_blobs(self, accesses: dict[str, tuple[int, bool, datetime]]) -> None:
        """Record the last access of blobs (sha256 -> (size, filled by pull-through, when)), in one
        upsert: a blob stays "proxied" (evictable) only while every access says so, its size is the
        first one recorded, and its last access never moves backwards (batches of several
        replicas arrive in any order)."""
        if not accesses:
            return
        b = t.blob_access.c
        # in key order: two replicas upserting overlapping batches lock rows in the same order
        rows = [{"sha256": sha, "size": size, "proxied": bool(proxied), "last_access": when}
                for sha, (size, proxied, when) in sorted(accesses.items())]
        with write(self.engine) as c:
            ins = insert(c, t.blob_access)
            new = ins.excluded
            c.execute(ins.on_conflict_do_update(index_elements=["sha256"], set_={
                "proxied": sa.and_(b.proxied, new.proxied),
                "last_access": sa.case((new.last_access > b.last_access, new.last_access), else_=b.last_access),
            }), rows)

    def eviction_candidates(self, limit: int = 1000) -> list[tuple[str, int]]:
        """Blobs filled by pull-through, least recently used first, that no hosted or declared
        mirror's commit references (those are never evicted)."""
        b, e = t.blob_access.c, t.entries.c
        # NOT EXISTS, each by the entries' sha256 index (NOT IN a union of every protected blob
        # would build that whole set first, and on PostgreSQL degrade past work_mem)
        kept = (sa.select(1).select_from(t.entries.join(t.repos, t.repos.c.id == e.repo))
                .where(e.sha256 == b.sha256, t.repos.c.origin.in_(["local", "mirror"])))
        pinned = (sa.select(1).select_from(t.entries.join(t.pins, sa.and_(t.pins.c.repo == e.repo,
                                                                          t.pins.c.commit == e.commit)))
                  .where(e.sha256 == b.sha256))
        q = (
            sa.select(b.sha256, b.size)
            .where(b.proxied == sa.true(), ~kept.exists(), ~pinned.exists())
            .order_by(b.last_access, b.sha256)
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
        with write(self.engine) as c:
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
        """A fill is about to send its first unverified byte: its row says it sent nothing yet
        (its checkpoints, `fill_failed`, then raise what it may have sent)."""
        with write(self.engine) as c:
            res = c.execute(sa.insert(t.unverified_fills).values(
                key=key, started_at=utcnow(), spool=spool, prefix_len=0, prefix_sha256=_EMPTY_SHA256, sent_end=0))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def unverified_fills_of(self, key: str) -> list[tuple[int, datetime, int | None, str | None, int | None]]:
        """(id, started_at, prefix_len, prefix_sha256, sent_end) of the journal rows of one blob."""
        u = t.unverified_fills.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(u.id, u.started_at, u.prefix_len, u.prefix_sha256, u.sent_end)
                             .where(u.key == key)).all()
        return [(r.id, r.started_at, r.prefix_len, r.prefix_sha256, r.sent_end) for r in rows]

    def fill_forget(self, fill_id: int) -> None:
        """The fill verified, or no byte of it reached a client, or its bytes proved right."""
        with write(self.engine) as c:
            c.execute(sa.delete(t.unverified_fills).where(t.unverified_fills.c.id == fill_id))

    def fill_failed(self, fill_id: int, prefix_len: int, prefix_sha256: str, sent_end: int | None) -> None:
        """The fill ended unverified after sending bytes: remember what it had written and how far
        its bytes reached clients."""
        with write(self.engine) as c:
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
        with write(self.engine) as c:
            c.execute(sa.delete(t.unverified_fills).where(u.started_at < cutoff))
            rows = c.execute(sa.select(u.id, u.key, u.started_at, u.prefix_len, u.prefix_sha256, u.sent_end)).all()
        return [(r.id, r.key, r.started_at, r.prefix_len, r.prefix_sha256, r.sent_end) for r in rows]
