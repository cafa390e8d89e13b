"""pull-through fills whose bytes reached clients before they were verified

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "unverified_fills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("prefix_len", sa.BigInteger, nullable=True),
        sa.Column("prefix_sha256", sa.String(64), nullable=True),
        sa.Column("sent_end", sa.BigInteger, nullable=True),
        sa.Column("spool", sa.String(200), nullable=True),
    )
    op.create_index("ix_unverified_fills_key", "unverified_fills", ["key"])
