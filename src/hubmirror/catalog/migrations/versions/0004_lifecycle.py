"""lifecycle: pins, audit log, repos gone upstream

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "pins",
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("commit", sa.String(40), primary_key=True),
        sa.Column("revision", sa.String(300), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("repo_type", sa.String(16), nullable=True),
        sa.Column("repo_id", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_audit_repo", "audit_log", ["repo_type", "repo_id", "id"])
    op.create_table(
        "repo_gone",
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
    )
