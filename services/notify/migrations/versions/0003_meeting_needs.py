"""meeting needs kept with the notifications that state them (issue #22)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_needs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column(
            "needs",
            sa.Text(),
            nullable=False,
            comment="MeetingNeeds (JSON): no identifier, no health data",
        ),
        sa.ForeignKeyConstraint(["id"], ["notifications.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("notification_needs")
