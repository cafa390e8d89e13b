"""events: the outbox of events, the webhook delivery log, post-sync hook runs, event flags

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("repo_type", sa.String(16), nullable=True),
        sa.Column("repo_id", sa.String(200), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("fanned_out_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_events_pending", "events", ["fanned_out_at", "id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event", sa.Integer, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("claimed_until", sa.DateTime, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("delivered_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_event", "deliveries", ["event"])
    op.create_table(
        "hook_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hook", sa.String(64), nullable=False),
        sa.Column("repo_type", sa.String(16), nullable=False),
        sa.Column("repo_id", sa.String(200), nullable=False),
        sa.Column("revision", sa.String(300), nullable=False),
        sa.Column("commit", sa.String(40), nullable=False),
        sa.Column("old_commit", sa.String(40), nullable=True),
        sa.Column("is_check", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("result", sa.String(16), nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("duration", sa.Float, nullable=True),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("claimed_until", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("repo_type", "repo_id", "commit", "hook", name="uq_hook_runs_commit_hook"),
    )
    op.create_index("ix_hook_runs_status", "hook_runs", ["status"])
    op.create_index("ix_hook_runs_repo", "hook_runs", ["repo_type", "repo_id", "id"])
    op.create_table(
        "event_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
