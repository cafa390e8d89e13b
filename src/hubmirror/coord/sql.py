"""Coordination between replicas through PostgreSQL (the database they already share).

* Repo and gc locks are advisory locks held on a connection of their own: a replica that dies
  loses its connection, and the server releases them at once.
* Leases are rows (`hubmirror_leases`: name, holder, token, expires_at). Taking one succeeds if
  there is no row or its holder let it lapse; every new holder gets a larger `token` (a fencing
  token); the holder renews it (a thread does, every third of its time to live) and a holder
  that could not renew in time has lost it and must stop. So a replica that dies mid-fill or
  mid-sync is taken over within `ttl` seconds.
* Rate counters are rows per (bucket, key, fixed window), incremented with one upsert that
  refuses past the limit, so every replica counts against the same budget.

These tables are coordination state, not catalog: they are created here if missing and hold
nothing that must survive.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
import uuid

import sqlalchemy as sa

from ..model.names import RepoRef
from .limits import Verdict

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS hubmirror_leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL, info TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS hubmirror_rate (
        bucket TEXT NOT NULL, key TEXT NOT NULL, win BIGINT NOT NULL, used INTEGER NOT NULL,
        PRIMARY KEY (bucket, key, win))""",
    "ALTER TABLE hubmirror_leases ADD COLUMN IF NOT EXISTS info TEXT NOT NULL DEFAULT ''",
]
_GC_KEY = 0x6875626D69727231  # "hubmirr1": the one gc lock


def _key(text: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


class _AdvisoryLock:
    def __init__(self, engine: sa.Engine, key: int, *, shared: bool, block: bool) -> None:
        self._engine = engine
        self._key = key
        self._shared = shared
        self._block = block
        self._conn: sa.Connection | None = None

    def acquire(self, block: bool | None = None) -> bool:
        block = self._block if block is None else block
        conn = self._engine.connect()
        fn = ("pg_advisory_lock" if block else "pg_try_advisory_lock") + ("_shared" if self._shared else "")
        try:
            got = conn.execute(sa.text(f"SELECT {fn}(:k)"), {"k": self._key}).scalar()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if block or got:
            self._conn = conn
            return True
        conn.close()
        return False

    def still_held(self) -> bool:
        """The lock lives as long as its session: a session the server ended (a network cut, an
        administrator) took it along, and another replica may hold it now."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1"))
            self._conn.commit()
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def release(self) -> None:
        if self._conn is not None:
            fn = "pg_advisory_unlock" + ("_shared" if self._shared else "")
            try:
                self._conn.execute(sa.text(f"SELECT {fn}(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()  # closing the session releases it in any case
                self._conn = None

    def __enter__(self) -> _AdvisoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SqlLease:
    def __init__(self, coord: SqlCoordinator, name: str, token: int, ttl: float) -> None:
        self._coord = coord
        self.name = name
        self.token = token
        self.ttl = ttl
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> bool:
        if self.lost:
            return False
        with self._coord.engine.begin() as c:
            ok = c.execute(sa.text(
                "UPDATE hubmirror_leases SET expires_at = now() + make_interval(secs => :ttl) "
                "WHERE name = :n AND holder = :h AND token = :t AND expires_at > now() RETURNING 1"),
                {"ttl": self.ttl, "n": self.name, "h": self._coord.holder, "t": self.token}).first()
        self.lost = ok is None
        return not self.lost

    def keep_alive(self) -> None:
        """Renew from a thread every third of the time to live until released (or lost)."""
        def run() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.renew():
                        return
                except sa.exc.SQLAlchemyError:
                    continue  # a blip: the next try may still be in time
        self._thread = threading.Thread(target=run, name=f"lease {self.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        with self._coord.engine.begin() as c:
            c.execute(sa.text("DELETE FROM hubmirror_leases WHERE name = :n AND holder = :h AND token = :t"),
                      {"n": self.name, "h": self._coord.holder, "t": self.token})


class SqlRateCounters:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._calls = 0

    def _hit(self, key: str, bucket: str, limit: int, window: float) -> Verdict:
        now = time.time()
        win = int(now // window)
        with self._engine.begin() as c:
            used = c.execute(sa.text(
                "INSERT INTO hubmirror_rate (bucket, key, win, used) VALUES (:b, :k, :w, 1) "
                "ON CONFLICT (bucket, key, win) DO UPDATE SET used = hubmirror_rate.used + 1 "
                "WHERE hubmirror_rate.used < :limit RETURNING used"),
                {"b": bucket, "k": key, "w": win, "limit": limit}).scalar()
            self._calls += 1
            if self._calls % 1000 == 0:  # old windows go, now and then
                c.execute(sa.text("DELETE FROM hubmirror_rate WHERE win < :w AND bucket = :b"),
                          {"w": win - 1, "b": bucket})
        reset_in = (win + 1) * window - now
        allowed = used is not None
        return Verdict(allowed, max(0, limit - int(used or 0)) if allowed else 0, reset_in, limit, window, bucket)

    async def hit(self, key: str, bucket: str, limit: int, window: float) -> Verdict:
        return await asyncio.to_thread(self._hit, key, bucket, limit, window)


class SqlCoordinator:
    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True, pool_size=5, max_overflow=45)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with self.engine.begin() as c:
            c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key("hubmirror schema")})
            for stmt in _SCHEMA:
                c.execute(sa.text(stmt))
        self.counters = SqlRateCounters(self.engine)

    def repo_lock(self, ref: RepoRef) -> _AdvisoryLock:
        return _AdvisoryLock(self.engine, _key(f"sync {ref}"), shared=False, block=False)

    def gc_lock(self, *, exclusive: bool = False) -> _AdvisoryLock:
        return _AdvisoryLock(self.engine, _GC_KEY, shared=not exclusive, block=True)

    def lease(self, name: str, ttl: float, info: str = "") -> SqlLease | None:
        with self.engine.begin() as c:
            token = c.execute(sa.text(
                "INSERT INTO hubmirror_leases (name, holder, token, expires_at, info) "
                "VALUES (:n, :h, 1, now() + make_interval(secs => :ttl), :i) "
                "ON CONFLICT (name) DO UPDATE SET holder = :h, token = hubmirror_leases.token + 1, "
                "expires_at = now() + make_interval(secs => :ttl), info = :i "
                "WHERE hubmirror_leases.expires_at < now() "
                "RETURNING token"), {"n": name, "h": self.holder, "ttl": ttl, "i": info}).scalar()
        if token is None:
            return None
        lease = SqlLease(self, name, int(token), ttl)
        lease.keep_alive()
        return lease

    def held(self, name: str) -> bool:
        return self.holder_info(name) is not None

    def holder_info(self, name: str) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(sa.text("SELECT info FROM hubmirror_leases WHERE name = :n AND expires_at > now()"),
                            {"n": name}).first()
        return None if row is None else str(row[0])

    def interest(self, name: str) -> _AdvisoryLock:
        return _AdvisoryLock(self.engine, _key(f"interest {name}"), shared=True, block=False)

    def interested(self, name: str) -> bool:
        probe = _AdvisoryLock(self.engine, _key(f"interest {name}"), shared=False, block=False)
        if probe.acquire():
            probe.release()
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()
