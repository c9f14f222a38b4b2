"""the guardians named on a child's consent, stored with the case (they may read the child's plan)

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
    op.add_column("sip_cases", sa.Column("guardians", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sip_cases", "guardians")
