"""Rollout analysis state and verdicts; webhook subscriptions, their outbox and attempts.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollout_analysis",
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("looks", sa.Integer, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
    )
    op.create_table(
        "rollout_verdicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("at", _WHEN, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("acted", sa.Boolean, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("signals", sa.JSON, nullable=False),
        sa.Column("leader", sa.String(128), nullable=False),
    )
    op.create_table(
        "hook_subscriptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    op.create_table(
        "hook_outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("hook_subscriptions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _WHEN, nullable=False, index=True),
        sa.Column("deadline_at", _WHEN, nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("delivered_at", _WHEN, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
    )
    op.create_table(
        "hook_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("hook_outbox.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("at", _WHEN, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("error", sa.String(512), nullable=True),
    )


def downgrade() -> None:
    for table in (
        "hook_attempts",
        "hook_outbox",
        "hook_subscriptions",
        "rollout_verdicts",
        "rollout_analysis",
    ):
        op.drop_table(table)
