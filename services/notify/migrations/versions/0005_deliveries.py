"""indexes for GET /deliveries: every channel's deliveries newest first, by recipient

Revision ID: 0005_deliveries
Revises: 0004_i17_claim_lease
Create Date: 2026-12-04 07:40:00.000000
"""

from alembic import op

revision = "0005_deliveries"
down_revision = "0004_i17_claim_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifications_created", "notifications", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_notifications_recipient", "notifications", ["recipient_hsa_id", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_recipient", table_name="notifications")
    op.drop_index("ix_notifications_created", table_name="notifications")
