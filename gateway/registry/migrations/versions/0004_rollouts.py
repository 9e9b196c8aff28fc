"""Rollouts: each adapter's stable version, rollouts, their sample counts and shadow pairs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STAGES = ("shadow", "canary", "promoted", "rolled_back", "aborted")


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("stable_version", sa.Integer, nullable=True))
    # Until now a name meant its newest servable version: that one is each adapter's stable.
    op.execute(
        "UPDATE adapters SET stable_version = (SELECT MAX(v.version) FROM adapter_versions v "
        "WHERE v.adapter_id = adapters.id AND v.state IN ('registered', 'loading', 'ready'))"
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("route", sa.String(128), nullable=False, index=True),
        sa.Column("active_route", sa.String(128), nullable=True, unique=True),
        sa.Column("stable_version", sa.Integer, nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=False),
        sa.Column("stage", sa.Enum(*STAGES, name="rollout_stage"), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("pinned_candidate", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "rollout_samples",
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "shadow_pairs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("primary_version", sa.Integer, nullable=False),
        sa.Column("primary_status", sa.Integer, nullable=False),
        sa.Column("primary_body", sa.Text, nullable=False),
        sa.Column("primary_ms", sa.Float, nullable=False),
        sa.Column("shadow_version", sa.Integer, nullable=False),
        sa.Column("shadow_status", sa.Integer, nullable=False),
        sa.Column("shadow_body", sa.Text, nullable=False),
        sa.Column("shadow_ms", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shadow_pairs")
    op.drop_table("rollout_samples")
    op.drop_table("rollouts")
    sa.Enum(name="rollout_stage").drop(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("stable_version")
