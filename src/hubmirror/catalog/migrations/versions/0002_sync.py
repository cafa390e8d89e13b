"""sync: declared mirrors with their state, sync run history, blob reuse by git oid

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

# bytewise: the "C" collation on PostgreSQL; on SQLite the type as it always was
from hubmirror.catalog.schema import bytewise

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "mirrors",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_type", sa.String(16), nullable=False),
        sa.Column("repo_id", bytewise(sa.String(200)), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("next_run_at", sa.DateTime, nullable=True),
        sa.Column("last_check_at", sa.DateTime, nullable=True),
        sa.Column("last_sync_at", sa.DateTime, nullable=True),
        sa.Column("upstream", sa.Text, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("repo_type", "repo_id", name="uq_mirrors_type_id"),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_type", sa.String(16), nullable=False),
        sa.Column("repo_id", sa.String(200), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("commits", sa.Text, nullable=True),
        sa.Column("files_fetched", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes_fetched", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("files_reused", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes_reused", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("upstream_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_sync_runs_repo", "sync_runs", ["repo_type", "repo_id", "id"])
    op.create_index("ix_entries_oid", "entries", ["oid"])
