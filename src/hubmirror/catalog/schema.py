"""Catalog tables (SQLAlchemy Core). The migrations under migrations/versions create them;
change both together and add a new migration, never edit an applied one.

On PostgreSQL the text columns that are ordered, ranged or paged by (entries.path and .parent,
repos.repo_id, mirrors.repo_id, refs.name, api_cache.key, users.name, tokens.name,
group_members.group) have the "C" collation: byte order, as SQLite's BINARY (see `bytewise`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()


def utcnow() -> datetime:
    """The catalog's clock: naive UTC, as every DateTime column stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def bytewise(type_: sa.String) -> sa.types.TypeEngine[str]:
    """A text type that compares and sorts by bytes on both databases: SQLite's default BINARY
    collation, and on PostgreSQL the "C" collation on the column.

    The queries order tree listings by path, select a folder's subtree with the range
    `under/ < path < under0`, page with `path > after`, and list repos, mirrors, users, groups and
    tokens in byte order. A PostgreSQL database created with a language's collation (en_US, ICU)
    sorts "a-b" before "a/b" and "B" between "b" and "c", which breaks the order, the range and the
    cursor. The collation belongs to the column rather than to each query (`COLLATE "C"`): the
    primary key and the other indexes are then in byte order, so ORDER BY path and the ranges use
    them instead of sorting every entry of a commit for each page. Equality is exact either way.

    The migrations that create these columns use it too: on SQLite their DDL is what it always
    was; PostgreSQL catalogs are created with it from the first migration on."""
    return type_.with_variant(type(type_)(type_.length, collation="C"), "postgresql")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """DATETIME (SQLite) / TIMESTAMP WITHOUT TIME ZONE (PostgreSQL) holding naive UTC. An aware
    value is converted to UTC before it is written or compared: SQLite would drop its offset and
    PostgreSQL would shift it to the session's time zone."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value


repos = sa.Table(
    "repos",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo_type", sa.String(16), nullable=False),
    sa.Column("repo_id", bytewise(sa.String(200)), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("gated", sa.String(16), nullable=True),
    sa.Column("origin", sa.String(8), nullable=False, server_default="local"),  # local | mirror | proxy (0003)
    sa.UniqueConstraint("repo_type", "repo_id", name="uq_repos_type_id"),
)

commits = sa.Table(
    "commits",
    metadata,
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sha", sa.String(40), primary_key=True),
    sa.Column("parents", sa.Text, nullable=False, server_default=""),  # space-separated shas
    sa.Column("tree", sa.String(40), nullable=True),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("author", sa.String(200), nullable=False, server_default=""),
    sa.Column("date", UtcDateTime, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
)

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("repo", sa.Integer, primary_key=True),
    sa.Column("commit", sa.String(40), primary_key=True),
    sa.Column("path", bytewise(sa.Text()), primary_key=True),
    sa.Column("parent", bytewise(sa.Text()), nullable=False),
    sa.Column("type", sa.String(9), nullable=False),  # file | directory
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("oid", sa.String(40), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("lfs", sa.Boolean, nullable=False),
    sa.Column("pointer_size", sa.Integer, nullable=True),
    sa.Column("last_commit", sa.String(40), nullable=True),
    sa.ForeignKeyConstraint(["repo", "commit"], ["commits.repo", "commits.sha"], ondelete="CASCADE"),
    sa.Index("ix_entries_parent", "repo", "commit", "parent", "path"),
    sa.Index("ix_entries_sha256", "sha256"),
)

refs = sa.Table(
    "refs",
    metadata,
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", bytewise(sa.String(300)), primary_key=True),  # full name: refs/heads/main, refs/tags/v1, refs/pr/1
    sa.Column("commit", sa.String(40), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

ref_log = sa.Table(
    "ref_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("old_commit", sa.String(40), nullable=True),
    sa.Column("new_commit", sa.String(40), nullable=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_ref_log_repo_name", "repo", "name", "id"),
)

mirrors = sa.Table(
    "mirrors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo_type", sa.String(16), nullable=False),
    sa.Column("repo_id", bytewise(sa.String(200)), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: revisions, include, exclude, schedule, enabled
    sa.Column("source", sa.String(16), nullable=False),  # cli | config
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("next_run_at", UtcDateTime, nullable=True),
    sa.Column("last_check_at", UtcDateTime, nullable=True),
    sa.Column("last_sync_at", UtcDateTime, nullable=True),
    sa.Column("upstream", sa.Text, nullable=True),  # JSON: revision -> upstream commit at the last check
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("repo_type", "repo_id", name="uq_mirrors_type_id"),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo_type", sa.String(16), nullable=False),
    sa.Column("repo_id", sa.String(200), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # cli | schedule | webhook | api
    sa.Column("status", sa.String(16), nullable=False),  # running | synced | up-to-date | failed
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("commits", sa.Text, nullable=True),  # JSON: revision -> commit
    sa.Column("files_fetched", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bytes_fetched", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("files_reused", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bytes_reused", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("upstream_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_sync_runs_repo", "repo_type", "repo_id", "id"),
)

entries_oid_index = sa.Index("ix_entries_oid", entries.c.oid)

# 0003: pull-through
upstream_info = sa.Table(
    "upstream_info",
    metadata,
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("commit", sa.String(40), primary_key=True),
    sa.Column("info", sa.Text, nullable=False),  # the upstream's repo-info JSON at that commit, sanitised
)

api_cache = sa.Table(
    "api_cache",
    metadata,
    sa.Column("key", bytewise(sa.String(1000)), primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("link", sa.Text, nullable=True),  # upstream Link rel=next, as a path+query on the upstream
    sa.Column("fetched_at", UtcDateTime, nullable=False),
)

blob_access = sa.Table(
    "blob_access",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("proxied", sa.Boolean, nullable=False),  # filled by pull-through (evictable)
    sa.Column("last_access", UtcDateTime, nullable=False),
    sa.Index("ix_blob_access_lru", "proxied", "last_access"),
)

# 0004: pins, audit log, upstream-gone marks
pins = sa.Table(
    "pins",
    metadata,
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("commit", sa.String(40), primary_key=True),
    sa.Column("revision", sa.String(300), nullable=False),  # what was asked when pinning
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("repo_type", sa.String(16), nullable=True),
    sa.Column("repo_id", sa.String(200), nullable=True),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),  # JSON
    sa.Index("ix_audit_repo", "repo_type", "repo_id", "id"),
)

repo_gone = sa.Table(
    "repo_gone",
    metadata,
    sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("since", UtcDateTime, nullable=False),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
)

# 0005: a row per pull-through fill while it runs; kept when the fill ended unverified after
# sending bytes to a client (or its process died), so that resumes onto those bytes are refused
unverified_fills = sa.Table(
    "unverified_fills",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(80), nullable=False),  # sha256:<hex> (LFS) or oid:<git blob sha1>
    sa.Column("started_at", UtcDateTime, nullable=False),
    # what the fill had written when it failed (NULL: its process died), to compare with a verified copy
    sa.Column("prefix_len", sa.BigInteger, nullable=True),
    sa.Column("prefix_sha256", sa.String(64), nullable=True),
    sa.Column("sent_end", sa.BigInteger, nullable=True),  # no client got a byte at or past this offset
    sa.Column("spool", sa.String(200), nullable=True),  # the partial file's name, to hash it after a crash
    sa.Index("ix_unverified_fills_key", "key"),
)

# 0006: users, groups and tokens; who did what in the audit log
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", bytewise(sa.String(64)), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("name", name="uq_users_name"),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("user", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("group", bytewise(sa.String(64)), primary_key=True),
    sa.Index("ix_group_members_group", "group"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", bytewise(sa.String(64)), nullable=False),
    sa.Column("user", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),  # sha256 hex of the token; the token itself is never stored
    sa.Column("role", sa.String(8), nullable=False),  # read | write | admin
    sa.Column("repos", sa.Text, nullable=True),  # JSON list of repo patterns the token is limited to; NULL: none
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("name", name="uq_tokens_name"),
    sa.UniqueConstraint("hash", name="uq_tokens_hash"),
    sa.Index("ix_tokens_user", "user"),
)

audit_log.append_column(sa.Column("actor", sa.String(200), nullable=True))  # e.g. cli:alice, user:bob (token ci)
audit_log.append_column(sa.Column("client", sa.String(100), nullable=True))  # local, or the client's address
audit_at_index = sa.Index("ix_audit_at", audit_log.c.at)

# 0007 (events): the outbox of events (catalog/events.py), the webhook delivery log, post-sync hook
# runs, and flags such as "the disk is low" that must change once however many processes look
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # events/kinds.py
    sa.Column("repo_type", sa.String(16), nullable=True),
    sa.Column("repo_id", sa.String(200), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("fanned_out_at", UtcDateTime, nullable=True),  # NULL: no dispatcher has taken it yet
    sa.Index("ix_events_pending", "fanned_out_at", "id"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event", sa.Integer, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    sa.Column("uuid", sa.String(36), nullable=False),  # X-Hubmirror-Delivery, the same on every attempt
    sa.Column("target", sa.String(200), nullable=False),  # the [[notify]] table's name
    sa.Column("url", sa.Text, nullable=False),  # as displayed: no credentials, no query
    sa.Column("status", sa.String(12), nullable=False),  # queued | sending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("claim", sa.String(32), nullable=True),  # who is sending it (compare-and-set)
    sa.Column("claimed_until", UtcDateTime, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_deliveries_event", "event"),
)

hook_runs = sa.Table(
    "hook_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hook", sa.String(64), nullable=False),  # the [[hooks]] table's name
    sa.Column("repo_type", sa.String(16), nullable=False),
    sa.Column("repo_id", sa.String(200), nullable=False),
    sa.Column("revision", sa.String(300), nullable=False),
    sa.Column("commit", sa.String(40), nullable=False),
    sa.Column("old_commit", sa.String(40), nullable=True),
    sa.Column("is_check", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status", sa.String(12), nullable=False),  # queued | running | done
    sa.Column("result", sa.String(16), nullable=True),  # ok | failed | timeout | error | interrupted
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("duration", sa.Float, nullable=True),  # seconds
    sa.Column("output", sa.Text, nullable=True),  # the last ~4 KB of stdout and stderr
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claim", sa.String(32), nullable=True),
    sa.Column("claimed_until", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("repo_type", "repo_id", "commit", "hook", name="uq_hook_runs_commit_hook"),
    sa.Index("ix_hook_runs_status", "status"),
    sa.Index("ix_hook_runs_repo", "repo_type", "repo_id", "id"),
)

event_state = sa.Table(
    "event_state",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # e.g. disk-low
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
