"""PostgreSQL: every audited change notifies the other gateway replicas (LISTEN/NOTIFY).

Every change to the registry writes an audit event in its own transaction, so a trigger on
`audit_events` is the one place that covers them all. NOTIFY is delivered when the
transaction commits and never when it rolls back. SQLite has no such channel: replicas read
the newest audit event's id instead (`gateway.registry.changes`).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Also in `gateway.registry.changes` (a migration must not import code that may change).
CHANNEL = "lora_gateway_registry"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION lora_gateway_notify_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_notify AFTER INSERT ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION lora_gateway_notify_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS audit_events_notify ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS lora_gateway_notify_change()")
