"""retention: the inbox's oldest rows are found by an index (shared/retention.py)

Revision ID: 0004_retention
Revises: 0003
Create Date: 2026-12-04 16:00:00.000000
"""

from alembic import op

revision = "0004_retention"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_inbox_processed", "inbox", ["processed_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inbox_processed", table_name="inbox")
