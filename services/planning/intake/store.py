"""The intake table: every received hospital message, its acknowledgement and its events.

One row per received message. ``(source, sender, control_id)`` is unique, so a resent message (same
MSH-10 / MessageHeader.id from the same sender) finds its row and is answered with the stored
acknowledgement, byte for byte, without a second effect. Messages without a control id (garbage) are
stored with ``control_id`` NULL for the record; NULLs do not collide.
"""

from __future__ import annotations

import sqlalchemy as sa

from shared.persistence import UTCDateTime

TABLE = "intake_messages"


def intake_tables(metadata: sa.MetaData) -> sa.Table:
    """Add ``intake_messages`` to ``metadata`` (idempotent) and return it."""
    if TABLE in metadata.tables:
        return metadata.tables[TABLE]
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(16), nullable=False),  # hl7v2 | fhir | json
        # who sent it: MSH-3|MSH-4 for HL7 v2, MessageHeader.source.endpoint for FHIR
        sa.Column("sender", sa.String(512), nullable=False, default=""),
        sa.Column("control_id", sa.String(200)),  # MSH-10 / MessageHeader.id; NULL when absent
        sa.Column("message_type", sa.String(64)),  # ADT^A03, discharge-inpatient-home, ...
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),  # the message as received (health data)
        sa.Column("outcome", sa.String(16), nullable=False),  # AA/AE/AR, ok/fatal-error
        sa.Column("http_status", sa.Integer),  # FHIR only
        sa.Column("response_body", sa.LargeBinary, nullable=False),  # ACK bytes / response JSON
        sa.Column("error", sa.Text),
        sa.Column("events", sa.Text, nullable=False, default="[]"),  # JSON list of HospitalEvent
        # lookup keys of the first event, so a cancellation can find what it cancels
        sa.Column("hospital_id", sa.String(200)),
        sa.Column("stay_id", sa.String(200)),
        sa.Column("primary_kind", sa.String(40)),
        # ---- the message store (migration 0003): searchable by operators ----
        # accepted | refused | effected | dead-lettered
        sa.Column("status", sa.String(16), nullable=False, server_default="accepted"),
        sa.Column("status_reason", sa.Text),
        sa.Column("correlation_id", sa.String(64)),
        # the person (12 digits when Swedish): searchable by operators (audited), never logged
        sa.Column("patient_identifier", sa.String(64)),
        sa.Column("effect", sa.Text),  # JSON: {"hospital_id", "stay_id", "case_id", "note"}
        sa.Column("replay_of", sa.Integer),  # the original message's id, for a replay
        sa.UniqueConstraint("source", "sender", "control_id", name="uq_intake_messages_control_id"),
        sa.Index("ix_intake_messages_stay", "source", "hospital_id", "stay_id", "primary_kind"),
        *message_store_indexes(),
    )


#: (name, columns) of the message store's indexes; searches page newest first by id (keyset)
MESSAGE_STORE_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
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
    # retention walks the originals (replay_of NULL) oldest first: without it SQLite took the replay_of
    # index for "IS NULL" and sorted every original for each batch (services/planning/adapters/retention.py)
    ("ix_intake_messages_original_received", ("replay_of", "received_at")),
)


def message_store_indexes() -> list[sa.Index]:
    return [sa.Index(name, *cols) for name, cols in MESSAGE_STORE_INDEXES]


VIEWS = "message_views"


def message_views_table(metadata: sa.MetaData) -> sa.Table:
    """Every operator's view of a stored message's raw content and every patient search of the store
    (besides the consent.access-recorded.v1 that goes to the person's audit trail)."""
    if VIEWS in metadata.tables:
        return metadata.tables[VIEWS]
    return sa.Table(
        VIEWS,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),  # raw | patient-search
        sa.Column("message_id", sa.Integer),
        sa.Column("viewer_hsa_id", sa.String(200)),
        sa.Column("viewer_subject", sa.String(128)),
        sa.Column("viewed_at", UTCDateTime, nullable=False),
        sa.Index("ix_message_views_message", "message_id"),
    )
