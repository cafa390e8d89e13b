"""pull-through: repo origin, upstream repo info per commit, API answer cache, blob LRU

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

# bytewise: the "C" collation on PostgreSQL; on SQLite the type as it always was
from hubmirror.catalog.schema import bytewise

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("repos") as b:
        b.add_column(sa.Column("origin", sa.String(8), nullable=False, server_default="local"))
    op.create_table(
        "upstream_info",
        sa.Column("repo", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("commit", sa.String(40), primary_key=True),
        sa.Column("info", sa.Text, nullable=False),
    )
    op.create_table(
        "api_cache",
        sa.Column("key", bytewise(sa.String(1000)), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("link", sa.Text, nullable=True),
        sa.Column("fetched_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "blob_access",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("proxied", sa.Boolean, nullable=False),
        sa.Column("last_access", sa.DateTime, nullable=False),
    )
    op.create_index("ix_blob_access_lru", "blob_access", ["proxied", "last_access"])
