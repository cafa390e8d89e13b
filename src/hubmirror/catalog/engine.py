"""Opening the catalog's database: the URL, each dialect's engine options, the dialect's INSERT
(for ON CONFLICT), and the translation of database failures into the package's errors.

Two databases are supported, through the same SQLAlchemy Core queries: SQLite (one box, the
default) and PostgreSQL (several replicas sharing one catalog), through psycopg 3.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ..errors import ConfigError, HubMirrorError, InsufficientStorage

PG_DRIVER = "postgresql+psycopg"


class CatalogUnavailable(HubMirrorError):
    """The catalog's database cannot be reached, or dropped the connection mid-request (restarted,
    failed over, network cut). Nothing was written; the request can be retried."""

    status = 503
    code = "CatalogUnavailable"


class CatalogBusy(CatalogUnavailable):
    """The database gave up on a transaction that raced another one (PostgreSQL: a serialization
    failure, a deadlock, a lock it could not take; SQLite: still locked after the busy timeout).
    It was rolled back whole; the request can be retried."""

    code = "CatalogBusy"


def normalise_url(url: str | sa.URL) -> sa.URL:
    """The URL with its driver: `postgresql://` and `postgres://` (what every PostgreSQL tool
    prints) mean psycopg 3, the driver this package depends on."""
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError as e:
        raise ConfigError(f"database_url is not a database URL: {e}") from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise ConfigError(f"database_url: the PostgreSQL driver {driver!r} is not supported; write "
                              f"postgresql://... (psycopg 3)")
        return u.set(drivername=PG_DRIVER)
    if backend == "sqlite":
        return u
    raise ConfigError(f"database_url: {backend!r} is not supported; use sqlite:///path or postgresql://...")


def _wal(cur: Any) -> None:
    """Switch a database to WAL. Switching a new database's journal mode takes its exclusive lock
    without calling the busy handler, so processes opening a new catalog at once would get
    "database is locked": wait and retry instead (WAL is persistent: once one has switched, the
    others find it switched)."""
    import sqlite3
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def create_engine(url: sa.URL) -> sa.Engine:
    """An engine with the options of its dialect, and the error translation installed."""
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            _wal(cur)
            cur.execute("PRAGMA synchronous=FULL")  # a committed transaction survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        db_dir: str | None = os.path.dirname(url.database or "") or "."
    else:
        engine = sa.create_engine(
            url,
            # a connection the server dropped (restart, failover, idle timeout) is replaced on checkout
            pool_pre_ping=True,
            # every DateTime column is naive UTC; a session in UTC makes server-side times agree
            connect_args={"options": "-c TimeZone=UTC", "connect_timeout": 10, "application_name": "hubmirror"},
        )
        db_dir = None
    dialect = engine.dialect.name

    @sa.event.listens_for(engine, "handle_error")
    def _translate(ctx: sa.engine.ExceptionContext) -> BaseException | None:
        if ctx.is_pre_ping:
            return None  # the pool reconnects on its own
        return translate(ctx.original_exception, dialect, db_dir, ctx.is_disconnect)

    return engine


@contextmanager
def write(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write transaction, committed at the end of the block (rolled back on an exception).

    On SQLite it starts with BEGIN IMMEDIATE, taking the one write lock first: the reads inside
    it then see what it will write over (pysqlite would otherwise run them outside any
    transaction, before its implicit BEGIN, and a compare-and-swap could lose an update to
    another process). PostgreSQL runs it at READ COMMITTED; the queries lock what they compare
    (SELECT ... FOR UPDATE) or let ON CONFLICT decide."""
    with engine.begin() as c:
        if c.dialect.name == "sqlite":
            c.exec_driver_sql("BEGIN IMMEDIATE")
        yield c


def insert(c: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing / on_conflict_do_update and
    `.excluded` (the same API on SQLite and PostgreSQL). Its result's rowcount says whether ON
    CONFLICT DO NOTHING inserted the row (SQLAlchemy keeps an INSERT's rowcount only when asked:
    psycopg's is gone once the cursor closes)."""
    if c.dialect.name == "postgresql":
        # imported when used: one-box startups skip it
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).execution_options(preserve_rowcount=True)
    return sqlite.insert(table).execution_options(preserve_rowcount=True)


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with `prefix` (byte order of
    UTF-8, which is code point order): `prefix <= s < prefix_end(prefix)` iff s starts with it."""
    chars = list(prefix)
    while chars:
        cp = ord(chars.pop()) + 1
        if cp == 0xD800:
            cp = 0xE000  # surrogates are not text
        if cp <= 0x10FFFF:
            return "".join(chars) + chr(cp)
    raise ValueError("no string is greater than every string with this prefix")


# -- errors ---------------------------------------------------------------------------------

# serialization_failure, deadlock_detected, lock_not_available
_PG_CONTENTION = {"40001", "40P01", "55P03"}
# admin_shutdown, crash_shutdown, cannot_connect_now (and all of class 08, connection_exception)
_PG_GONE = {"57P01", "57P02", "57P03"}


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def translate(e: BaseException, dialect: str, db_dir: str | None, is_disconnect: bool) -> HubMirrorError | None:
    """The package's error for a database failure that callers cannot handle themselves, or None
    to let SQLAlchemy raise its own (an IntegrityError, say, that the queries catch)."""
    if _is_disk_full(e, db_dir):
        # the answer callers and clients understand: 507, "InsufficientStorage"
        return InsufficientStorage("the catalog cannot be written: its disk is full (free some space; "
                                   "everything stored keeps being served)")
    state = getattr(e, "sqlstate", None)
    if dialect == "postgresql":
        if state in _PG_CONTENTION:
            return CatalogBusy(f"the catalog gave up on a transaction that raced another one, nothing of it "
                               f"was recorded; retry ({_first_line(e)})")
        # psycopg's OperationalError without a SQLSTATE: the connection failed or broke
        broken = type(e).__name__ == "OperationalError" and state is None
        if is_disconnect or broken or (state is not None and (state.startswith("08") or state in _PG_GONE)):
            return CatalogUnavailable(f"the catalog database cannot be reached or dropped the connection, "
                                      f"nothing was recorded; retry ({_first_line(e)})")
        return None
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return CatalogBusy(f"the catalog stayed locked by another writer past the busy timeout, nothing of "
                           f"this write was recorded; retry ({_first_line(e)})")
    return None
