"""retention: the payloads still kept, oldest first, through (payload_pruned_at, created_at) of those rows

0006's partial index on created_at (WHERE payload_pruned_at IS NULL) was passed over by SQLite for
ix_notifications_due, and each retention batch then sorted every sent notification (132-160 ms a batch
at 90,000 rows, README "Data volume"). PostgreSQL keeps reading 0006's index (it prefers it, and
ix_notifications_created, to this one); the services' SQLite files get this index from the models.

Revision ID: 0007_payload_walk
Revises: 0006_retention
Create Date: 2026-12-04 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_payload_walk"
down_revision = "0006_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_notifications_payload_walk",
        "notifications",
        ["payload_pruned_at", "created_at"],
        unique=False,
        sqlite_where=sa.text("payload_pruned_at IS NULL"),
        postgresql_where=sa.text("payload_pruned_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_payload_walk", table_name="notifications")
