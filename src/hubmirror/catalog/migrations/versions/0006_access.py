"""access: users, groups, tokens; actor and client in the audit log

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

# bytewise: the "C" collation on PostgreSQL; on SQLite the type as it always was
from hubmirror.catalog.schema import bytewise

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", bytewise(sa.String(64)), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "group_members",
        sa.Column("user", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("group", bytewise(sa.String(64)), primary_key=True),
    )
    op.create_index("ix_group_members_group", "group_members", ["group"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", bytewise(sa.String(64)), nullable=False),
        sa.Column("user", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("repos", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sa.Column("last_used_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("name", name="uq_tokens_name"),
        sa.UniqueConstraint("hash", name="uq_tokens_hash"),
    )
    op.create_index("ix_tokens_user", "tokens", ["user"])
    op.add_column("audit_log", sa.Column("actor", sa.String(200), nullable=True))
    op.add_column("audit_log", sa.Column("client", sa.String(100), nullable=True))
    op.create_index("ix_audit_at", "audit_log", ["at"])
