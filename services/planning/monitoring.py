"""Planning's scrape-time gauges for the alerts on intake (deploy/prometheus/alerts.yml).

- ``sip_intake_last_accepted_timestamp_seconds{sender, source}`` — the time (Unix seconds) of the
  newest accepted hospital message per sender (the HSA-id of the sending facility: MSH-4 /
  MessageHeader.sender) and source (``hl7v2`` | ``fhir`` | ``json``). A sender not in the directory
  is ``sender="unlisted"`` — the label set stays bounded by the directory.
- ``sip_intake_expected_gap_seconds{sender}`` — the longest usual gap between two accepted messages
  from the sender *now* (working hours or off hours, from ``intake_defaults`` / ``intake:`` in the
  directory). ``IntakeSenderSilent`` compares the two, so the rule itself knows no office hours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.directory import Directory
from shared.metrics import DbCollector, GaugeSpec, Rows, ServiceMetrics

LAST_ACCEPTED = "sip_intake_last_accepted_timestamp_seconds"
EXPECTED_GAP = "sip_intake_expected_gap_seconds"
UNLISTED = "unlisted"


def intake_counter(metrics: ServiceMetrics, directory: Directory) -> Callable[[str, str | None, str], None]:
    """The ``observe`` callback of the intake service: counts each recorded message."""
    listed = {org.hsa_id for org in directory.organisations}
    counter = metrics.counter(
        "sip_intake_messages",
        "Hospital messages recorded, by sender HSA-id, source and outcome (ACK code, or duplicate)",
        ["sender", "source", "outcome"],
    )

    def observe(source: str, hospital_id: str | None, outcome: str) -> None:
        sender = hospital_id if hospital_id in listed else UNLISTED
        counter.labels(sender=sender, source=source, outcome=str(outcome)[:16]).inc()

    return observe


def intake_gauges(
    intake: sa.Table,
    directory: Directory,
    *,
    accepted: tuple[str, ...],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DbCollector:
    listed = {org.hsa_id for org in directory.organisations}

    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        rows = (
            await conn.execute(
                sa.select(intake.c.hospital_id, intake.c.source, sa.func.max(intake.c.received_at))
                .where(intake.c.outcome.in_(accepted))
                .group_by(intake.c.hospital_id, intake.c.source)
            )
        ).all()
        last: dict[tuple[str, str], float] = {}
        for hospital_id, source, newest in rows:
            if newest is None:
                continue
            if newest.tzinfo is None:
                newest = newest.replace(tzinfo=UTC)
            key = (hospital_id if hospital_id in listed else UNLISTED, str(source))
            last[key] = max(last.get(key, 0.0), newest.timestamp())
        gaps = directory.expected_intake_gaps(now())
        return {
            LAST_ACCEPTED: list(last.items()),
            EXPECTED_GAP: [((hsa_id,), seconds) for hsa_id, seconds in gaps.items()],
        }

    return DbCollector(
        "intake",
        (
            GaugeSpec(
                LAST_ACCEPTED,
                "Time (Unix seconds) of the newest accepted hospital message, by sender HSA-id and source",
                ("sender", "source"),
            ),
            GaugeSpec(
                EXPECTED_GAP,
                "The longest usual gap between two accepted messages from the sender now (working or "
                "off hours, from the directory)",
                ("sender",),
            ),
        ),
        query,
    )
