"""retention: the oldest AuditEvents and inbox rows are found by an index (shared/retention.py)

Revision ID: 0003_retention
Revises: 0002
Create Date: 2026-12-04 16:00:00.000000
"""

from alembic import op

revision = "0003_retention"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded_at"], unique=False)
    op.create_index("ix_inbox_processed", "inbox", ["processed_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inbox_processed", table_name="inbox")
    op.drop_index("ix_audit_events_recorded", table_name="audit_events")
