"""retention: when a notification's payload was blanked, the payloads still kept and the oldest inbox
rows found by an index (services/notify/adapters/retention.py, shared/retention.py)

Revision ID: 0006_retention
Revises: 0005_deliveries
Create Date: 2026-12-04 16:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_retention"
down_revision = "0005_deliveries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("payload_pruned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_notifications_payload_kept",
        "notifications",
        ["created_at"],
        unique=False,
        sqlite_where=sa.text("payload_pruned_at IS NULL"),
        postgresql_where=sa.text("payload_pruned_at IS NULL"),
    )
    op.create_index("ix_inbox_processed", "inbox", ["processed_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inbox_processed", table_name="inbox")
    op.drop_index("ix_notifications_payload_kept", table_name="notifications")
    op.drop_column("notifications", "payload_pruned_at")
