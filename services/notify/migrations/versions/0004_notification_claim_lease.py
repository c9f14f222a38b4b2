"""a lease on a claimed notification: several notify replicas, and one that dies mid-send is taken over

Revision ID: 0004_i17_claim_lease
Revises: 0003
Create Date: 2026-12-04 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i17_claim_lease"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("notifications", sa.Column("claimed_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "claimed_by")
    op.drop_column("notifications", "claimed_until")
