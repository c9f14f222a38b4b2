"""indexes found missing by the EXPLAIN test (tests/integration/ops/test_indexes_explain.py): the stays
listing, newest first, of all hospitals or of one, read the whole table and sorted it

Revision ID: 0005_hot_query_indexes
Revises: 0004_retention
Create Date: 2026-12-04 16:10:00.000000
"""

from alembic import op

revision = "0005_hot_query_indexes"
down_revision = "0004_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_hospital_stays_updated", "hospital_stays", ["updated_at"], unique=False)
    op.create_index(
        "ix_hospital_stays_hospital_updated", "hospital_stays", ["hospital_id", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_hospital_stays_hospital_updated", table_name="hospital_stays")
    op.drop_index("ix_hospital_stays_updated", table_name="hospital_stays")
