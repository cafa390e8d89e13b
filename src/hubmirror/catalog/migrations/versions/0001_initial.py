"""initial catalog: repos, commits, entries, refs, ref_log

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

# bytewise: the "C" collation on PostgreSQL; on SQLite the type as it always was
from hubmirror.catalog.schema import bytewise

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "repos",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_type", sa.String(16), nullable=False),
        sa.Column("repo_id", bytewise(sa.String(200)), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("gated", sa.String(16), nullable=True),
        sa.UniqueConstraint("repo_type", "repo_id", name="uq_repos_type_id"),
    )
    op.create_table(
        "commits",
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sha", sa.String(40), primary_key=True),
        sa.Column("parents", sa.Text, nullable=False, server_default=""),
        sa.Column("tree", sa.String(40), nullable=True),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("date", sa.DateTime, nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "entries",
        sa.Column("repo", sa.Integer, primary_key=True),
        sa.Column("commit", sa.String(40), primary_key=True),
        sa.Column("path", bytewise(sa.Text()), primary_key=True),
        sa.Column("parent", bytewise(sa.Text()), nullable=False),
        sa.Column("type", sa.String(9), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("oid", sa.String(40), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("lfs", sa.Boolean, nullable=False),
        sa.Column("pointer_size", sa.Integer, nullable=True),
        sa.Column("last_commit", sa.String(40), nullable=True),
        sa.ForeignKeyConstraint(["repo", "commit"], ["commits.repo", "commits.sha"], ondelete="CASCADE"),
    )
    op.create_index("ix_entries_parent", "entries", ["repo", "commit", "parent", "path"])
    op.create_index("ix_entries_sha256", "entries", ["sha256"])
    op.create_table(
        "refs",
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", bytewise(sa.String(300)), primary_key=True),
        sa.Column("commit", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "ref_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("old_commit", sa.String(40), nullable=True),
        sa.Column("new_commit", sa.String(40), nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_ref_log_repo_name", "ref_log", ["repo", "name", "id"])
