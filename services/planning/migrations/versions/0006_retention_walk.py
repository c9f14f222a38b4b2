"""the retention batch walks the original messages oldest first through an index: on SQLite (and a
year-old store) planning's intake-message candidates were sorted whole for every batch (0.29 s at
284,000 rows), holding the service's one connection — and its live path — that long

Revision ID: 0006_retention_walk
Revises: 0005_hot_query_indexes
Create Date: 2026-12-04 20:05:00.000000
"""

from alembic import op

revision = "0006_retention_walk"
down_revision = "0005_hot_query_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_intake_messages_original_received", "intake_messages", ["replay_of", "received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_intake_messages_original_received", table_name="intake_messages")
