"""case owner on consent requests, source of audit events ("Only those who belong")

consent_requests.requested_by_hsa_id keeps the unit that owns the case (ConsentRequested carries it):
the owner's relation to a consent is decided on it. audit_events.source names the service where an
audited read happened (planning, notify; NULL for consent itself). Both nullable: rows kept before
read as "no known owner" and "consent".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consent_requests", sa.Column("requested_by_hsa_id", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_events", "source")
    op.drop_column("consent_requests", "requested_by_hsa_id")
