"""Quality: scorer configurations, the response log, feedback, scores and per-variant
signal aggregates.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _rollout_key() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("signal", sa.String(80), primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "scorer_configs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("routes", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("route", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("variant", sa.String(16), nullable=True),
        sa.Column("rollout_id", sa.Integer, nullable=True, index=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("prompt_text", sa.Text, nullable=True),
        sa.Column("answer_text", sa.Text, nullable=True),
        sa.UniqueConstraint("tenant", "request_id", name="uq_response_tenant_id"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "response_id",
            sa.Integer,
            sa.ForeignKey("responses.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("rating", sa.JSON, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject", sa.String(160), nullable=False),
        sa.Column(
            "response_id",
            sa.Integer,
            sa.ForeignKey("responses.id", ondelete="CASCADE"),
            nullable=True,
            index=True,
        ),
        sa.Column("rollout_id", sa.Integer, nullable=True, index=True),
        sa.Column("route", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("variant", sa.String(16), nullable=True),
        sa.Column("scorer", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=True),
        sa.Column("detail", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("subject", "scorer", name="uq_score_subject"),
    )
    op.create_table(
        "signal_aggregates",
        *_rollout_key(),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("total_sq", sa.Float, nullable=False),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("fails", sa.Integer, nullable=False),
    )
    op.create_table(
        "signal_reservoir",
        *_rollout_key(),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("item", sa.String(160), nullable=False),
        sa.Column("rank", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signal_reservoir")
    op.drop_table("signal_aggregates")
    op.drop_table("scores")
    op.drop_table("feedback")
    op.drop_table("responses")
    op.drop_table("scorer_configs")
