"""Planning's gauges for the alerts: intake per sender (last accepted, expected gap from the directory,
working-hours aware) and the cases whose invitation deadline is near and not met."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from services.planning.intake.service import ACCEPTED
from services.planning.intake.store import intake_tables
from services.planning.monitoring import UNLISTED, intake_gauges
from shared.directory import Directory, load_directory
from shared.metrics import case_gauges
from shared.persistence import UTCDateTime
from tests.unit.ops.test_metrics import runtime, samples

REPO = Path(__file__).resolve().parents[3]
HOSPITAL = "SE2321000016-SJH01"

# Friday 4 December 2026: 09:00 in Stockholm is 08:00 UTC (working hours); Saturday 03:00 is off hours
FRIDAY_MORNING = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
SATURDAY_NIGHT = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


def directory(extra: list[dict] | None = None, defaults: dict | None = None) -> Directory:
    orgs = [
        {"hsa_id": HOSPITAL, "name": "Södersjukhuset", "kind": "hospital"},
        {"hsa_id": "SE2321000016-SJH02", "name": "Quiet hospital", "kind": "hospital",
         "intake": {"monitored": False}},
        {"hsa_id": "SE2321000016-VC001", "name": "VC", "kind": "primary_care_unit"},
        *(extra or []),
    ]  # fmt: skip
    return Directory.model_validate(
        {"organisations": orgs, **({"intake_defaults": defaults} if defaults else {})}
    )


def test_expected_gaps_follow_working_hours_in_stockholm_time():
    d = directory(
        [{"hsa_id": "SE2321000016-LAB1", "name": "Lab", "kind": "region_other",
          "intake": {"working_hours_gap_minutes": 15}}],
        defaults={"working_hours_gap_minutes": 60, "off_hours_gap_minutes": 360},
    )  # fmt: skip
    working, night = d.expected_intake_gaps(FRIDAY_MORNING), d.expected_intake_gaps(SATURDAY_NIGHT)
    # hospitals by default, the organisation with its own intake entry too; unmonitored and others not
    assert working == {HOSPITAL: 3600.0, "SE2321000016-LAB1": 900.0}
    assert night == {HOSPITAL: 21600.0, "SE2321000016-LAB1": 21600.0}
    # 06:30 Stockholm on a weekday is still off hours; 07:00 starts working hours
    assert d.expected_intake_gaps(datetime(2026, 12, 4, 5, 30, tzinfo=UTC))[HOSPITAL] == 21600.0
    assert d.expected_intake_gaps(datetime(2026, 12, 4, 6, 0, tzinfo=UTC))[HOSPITAL] == 3600.0
    # summer time: 07:00 Stockholm is 05:00 UTC
    assert d.expected_intake_gaps(datetime(2026, 6, 10, 5, 0, tzinfo=UTC))[HOSPITAL] == 3600.0


def test_the_shipped_directory_watches_its_hospital():
    d = load_directory(REPO / "config/directory.yaml")
    assert d.expected_intake_gaps(FRIDAY_MORNING) == {HOSPITAL: 1800.0}
    assert d.expected_intake_gaps(SATURDAY_NIGHT) == {HOSPITAL: 14400.0}


async def scrape(app: FastAPI) -> dict:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return samples((await c.get("/metrics")).text)


async def test_intake_gauges_report_the_newest_accepted_message_per_sender_and_the_gap(tmp_path: Path):
    md = sa.MetaData()
    table = intake_tables(md)
    rt = runtime(tmp_path, "planning", md)
    now = [FRIDAY_MORNING]
    rt.metrics.add_db_collector(intake_gauges(table, directory(), accepted=ACCEPTED, now=lambda: now[0]))
    app = FastAPI()
    rt.add_health_routes(app)
    base = {"content_sha256": "0" * 64, "raw": b"x", "response_body": b"", "events": "[]"}
    async with rt.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        await conn.execute(
            table.insert(),
            [
                {**base, "source": "hl7v2", "sender": "A|B", "control_id": "1", "hospital_id": HOSPITAL,
                 "outcome": "AA", "received_at": FRIDAY_MORNING - timedelta(hours=2)},
                {**base, "source": "hl7v2", "sender": "A|B", "control_id": "2", "hospital_id": HOSPITAL,
                 "outcome": "AA", "received_at": FRIDAY_MORNING - timedelta(minutes=40)},
                # refused: not counted as a sign of life
                {**base, "source": "hl7v2", "sender": "A|B", "control_id": "3", "hospital_id": HOSPITAL,
                 "outcome": "AE", "received_at": FRIDAY_MORNING - timedelta(minutes=1)},
                {**base, "source": "fhir", "sender": "http://x", "control_id": "4", "hospital_id": HOSPITAL,
                 "outcome": "ok", "received_at": FRIDAY_MORNING - timedelta(hours=5)},
                # a facility the directory does not know: one bounded label
                {**base, "source": "hl7v2", "sender": "Z|Z", "control_id": "5", "hospital_id": "SE-NOT-LISTED",
                 "outcome": "AA", "received_at": FRIDAY_MORNING - timedelta(hours=1)},
            ],
        )  # fmt: skip
    got = await scrape(app)
    last = "sip_intake_last_accepted_timestamp_seconds"
    assert (
        got[(last, (("sender", HOSPITAL), ("source", "hl7v2")))]
        == (FRIDAY_MORNING - timedelta(minutes=40)).timestamp()
    )
    assert (
        got[(last, (("sender", HOSPITAL), ("source", "fhir")))]
        == (FRIDAY_MORNING - timedelta(hours=5)).timestamp()
    )
    assert (
        got[(last, (("sender", UNLISTED), ("source", "hl7v2")))]
        == (FRIDAY_MORNING - timedelta(hours=1)).timestamp()
    )
    assert not any("SE-NOT-LISTED" in str(k) for k in got)
    assert got[("sip_intake_expected_gap_seconds", (("sender", HOSPITAL),))] == 3600.0
    assert ("sip_intake_expected_gap_seconds", (("sender", "SE2321000016-SJH02"),)) not in got
    now[0] = SATURDAY_NIGHT  # the same sender is expected less often at night
    got = await scrape(app)
    assert got[("sip_intake_expected_gap_seconds", (("sender", HOSPITAL),))] == 21600.0
    await rt.engine.dispose()


async def test_invitation_due_cases_count_the_running_clocks_due_within_each_window(tmp_path: Path):
    md = sa.MetaData()
    cases = sa.Table(
        "cases", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(32)),
        sa.Column("invitation_due_at", UTCDateTime),
    )  # fmt: skip
    rt = runtime(tmp_path, "planning", md)
    now = FRIDAY_MORNING
    rt.metrics.add_db_collector(
        case_gauges(
            cases,
            open_states={"consent_pending", "invitation_requested", "invited", "suspended"},
            clock_states={"consent_pending", "invitation_requested"},
            now=lambda: now,
        )
    )
    app = FastAPI()
    rt.add_health_routes(app)
    async with rt.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        await conn.execute(
            cases.insert(),
            [
                {"state": "consent_pending", "invitation_due_at": now + timedelta(hours=1)},  # 4 h and 24 h
                {"state": "invitation_requested", "invitation_due_at": now + timedelta(hours=3, minutes=59)},
                {"state": "consent_pending", "invitation_due_at": now + timedelta(hours=10)},  # 24 h only
                {"state": "consent_pending", "invitation_due_at": now + timedelta(hours=30)},  # neither
                {"state": "consent_pending", "invitation_due_at": now - timedelta(hours=1)},  # breached
                {"state": "invited", "invitation_due_at": now + timedelta(hours=1)},  # met
                {"state": "suspended", "invitation_due_at": now + timedelta(hours=1)},  # clock paused
                {"state": "closed", "invitation_due_at": now + timedelta(hours=1)},
            ],
        )
    got = await scrape(app)
    await rt.engine.dispose()
    assert got[("sip_planning_invitation_due_cases", (("within_hours", "4"),))] == 2
    assert got[("sip_planning_invitation_due_cases", (("within_hours", "24"),))] == 3
    assert got[("sip_planning_deadline_breached_cases", (("state", "consent_pending"),))] == 1


async def test_the_intake_counts_each_recorded_message_by_sender_source_and_outcome(tmp_path: Path):
    from services.planning.intake import IntakeService
    from services.planning.monitoring import intake_counter
    from shared.persistence import make_engine, sqlite_url
    from tests.unit.intake.messages import adt_bytes

    md = sa.MetaData()
    table = intake_tables(md)
    engine = make_engine(sqlite_url(tmp_path / "intake.db"))
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    seen: list[tuple[str, str | None, str]] = []
    service = IntakeService(engine, table, observe=lambda *args: seen.append(args))
    await service.handle_hl7(adt_bytes(control_id="C1"))
    await service.handle_hl7(adt_bytes(control_id="C1"))  # the resend: answered from the store
    await service.handle_hl7(b"MSH|^~\\&|garbage")
    async with engine.connect() as conn:
        hospital = (
            await conn.execute(sa.select(table.c.hospital_id).where(table.c.control_id == "C1"))
        ).scalar()
    await engine.dispose()
    assert hospital
    assert seen[:2] == [("hl7v2", hospital, "AA"), ("hl7v2", hospital, "duplicate")]
    assert seen[2][0] == "hl7v2" and seen[2][2] in {"AE", "AR"}

    # the counter: a listed sender by its HSA-id, anything else as "unlisted"
    rt = runtime(tmp_path, "planning", sa.MetaData())
    observe = intake_counter(rt.metrics, directory())
    observe("hl7v2", HOSPITAL, "AA")
    observe("hl7v2", HOSPITAL, "AA")
    observe("fhir", "SE-SOMEONE-ELSE", "ok")
    observe("hl7v2", None, "AR")
    got = samples(rt.metrics.render().decode())
    await rt.engine.dispose()
    name = "sip_intake_messages_total"
    assert got[(name, (("outcome", "AA"), ("sender", HOSPITAL), ("source", "hl7v2")))] == 2
    assert got[(name, (("outcome", "ok"), ("sender", UNLISTED), ("source", "fhir")))] == 1
    assert got[(name, (("outcome", "AR"), ("sender", UNLISTED), ("source", "hl7v2")))] == 1
