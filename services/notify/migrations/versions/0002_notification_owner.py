"""the unit that owns the case, stored on each notification (it may read the case's notifications)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("owner_hsa_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "owner_hsa_id")
