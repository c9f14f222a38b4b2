"""an index found missing by the EXPLAIN test (tests/integration/ops/test_indexes_explain.py): an
organisation's view of a person's audit read every consent request to find the cases it owns

Revision ID: 0004_hot_query_indexes
Revises: 0003_retention
Create Date: 2026-12-04 16:10:00.000000
"""

from alembic import op

revision = "0004_hot_query_indexes"
down_revision = "0003_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_consent_requests_requested_by", "consent_requests", ["requested_by_hsa_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_consent_requests_requested_by", table_name="consent_requests")
