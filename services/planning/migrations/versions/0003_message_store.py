"""the message store: intake_messages searchable by operators (status, correlation id, patient, effect,
replay lineage, indexes for each search) and message_views (every raw view and patient search)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 07:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

# as in services/planning/intake/store.py when written (a migration does not follow later models)
MESSAGE_STORE_INDEXES = (
    ("ix_intake_messages_received", ("received_at", "id")),
    ("ix_intake_messages_sender", ("sender", "id")),
    ("ix_intake_messages_sender_time", ("sender", "received_at")),
    ("ix_intake_messages_type", ("message_type", "id")),
    ("ix_intake_messages_status", ("status", "id")),
    ("ix_intake_messages_status_time", ("status", "received_at")),
    ("ix_intake_messages_control", ("control_id",)),
    ("ix_intake_messages_correlation", ("correlation_id",)),
    ("ix_intake_messages_patient", ("patient_identifier", "id")),
    ("ix_intake_messages_replay_of", ("replay_of",)),
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "intake_messages",
        sa.Column("status", sa.String(length=16), nullable=False, server_default="accepted"),
    )
    op.add_column("intake_messages", sa.Column("status_reason", sa.Text(), nullable=True))
    op.add_column("intake_messages", sa.Column("correlation_id", sa.String(length=64), nullable=True))
    op.add_column("intake_messages", sa.Column("patient_identifier", sa.String(length=64), nullable=True))
    op.add_column("intake_messages", sa.Column("effect", sa.Text(), nullable=True))
    op.add_column("intake_messages", sa.Column("replay_of", sa.Integer(), nullable=True))
    # messages stored before the store: refused ones say so
    op.execute(
        "UPDATE intake_messages SET status = 'refused', status_reason = error "
        "WHERE outcome NOT IN ('AA', 'ok')"
    )
    for name, cols in MESSAGE_STORE_INDEXES:
        op.create_index(name, "intake_messages", list(cols), unique=False)
    op.create_table(
        "message_views",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("viewer_hsa_id", sa.String(length=200), nullable=True),
        sa.Column("viewer_subject", sa.String(length=128), nullable=True),
        sa.Column("viewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_message_views_message", "message_views", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_message_views_message", table_name="message_views")
    op.drop_table("message_views")
    for name, _ in MESSAGE_STORE_INDEXES:
        op.drop_index(name, table_name="intake_messages")
    for col in ("replay_of", "effect", "patient_identifier", "correlation_id", "status_reason", "status"):
        op.drop_column("intake_messages", col)
