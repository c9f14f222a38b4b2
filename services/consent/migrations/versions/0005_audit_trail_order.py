"""a person's audit trail is read newest first by (recorded_at, id) (audit_for_patient, keyset
paging on both): the person's index gets the id, so a page is the first rows of one backward index
scan, not a sort of the person's whole trail (tests/integration/ops/test_indexes_explain.py)

Revision ID: 0005_audit_trail_order
Revises: 0004_hot_query_indexes
Create Date: 2026-12-04 19:10:00.000000
"""

from alembic import op

revision = "0005_audit_trail_order"
down_revision = "0004_hot_query_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_patient_time_id",
        "audit_events",
        ["patient_identifier", "recorded_at", "id"],
        unique=False,
    )
    op.drop_index("ix_audit_events_patient_time", table_name="audit_events")


def downgrade() -> None:
    op.create_index(
        "ix_audit_events_patient_time", "audit_events", ["patient_identifier", "recorded_at"], unique=False
    )
    op.drop_index("ix_audit_events_patient_time_id", table_name="audit_events")
