"""HL7 v2 and FHIR hospital messages → the one event model → the stay's SIP case, on a real SQLite file.

These are the *effects* behind the ACK codes tested over a real socket in tests/integration/intake.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.planning import handlers
from services.planning.adapters.store import SqlCaseRepository, metadata
from services.planning.intake import parse_adt, parse_message_bundle
from shared.clock import FixedClock
from shared.contracts import ConsentRequested
from shared.directory import UnknownRecipient, load_directory
from shared.persistence import make_engine
from tests.support.personnummer import ADULT, CHILD
from tests.unit.intake.messages import CONFORMANCE, adt_bytes

pytestmark = pytest.mark.store_free

REPO = Path(__file__).resolve().parents[3]
DIRECTORY = load_directory(REPO / "config" / "directory.yaml")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
VC = "SE2321000016-VC001"


class Outbox:
    def __init__(self):
        self.sent = []

    async def send(self, m):
        self.sent.append(m)


@pytest.fixture
async def db(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    async with engine.begin() as c:
        await c.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def hl7(trigger: str, control_id: str, **kw) -> bytes:
    kw.setdefault("kommun", "0180")
    raw = adt_bytes(trigger, control_id=control_id, **kw)
    # the listed primary-care unit of the Stockholm examples in config/directory.yaml
    return raw.replace(b"SE2321000131-E000000000111", VC.encode())


async def feed(db, raw: bytes, out: Outbox, **kw):
    outcome = parse_adt(raw)
    assert outcome.ack_code == "AA", outcome.error
    result = None
    for event in outcome.events:
        async with db.begin() as conn:
            result = await handlers.handle_stay_event(
                event,
                repo=SqlCaseRepository(conn),
                outbox=out,
                directory=DIRECTORY,
                clock=FixedClock(NOW),
                **kw,
            )
    return result


async def cases(db):
    async with db.connect() as conn:
        return await SqlCaseRepository(conn).open_cases(include_closed=True)


async def test_a03_opens_a_case_routed_to_the_home_kommun_and_listed_unit(db):
    out = Outbox()
    case = await feed(db, hl7("A03", "M1"), out)
    assert case is not None and case.state == "consent_pending"
    assert case.participant_ids[:2] == ("SE2120001-SOC0180", VC)
    assert case.patient_identifier == ADULT and case.kommun_code == "0180"
    # PV1-45 20240301140000+0100: the discharge time is the earliest known readiness
    assert case.ready_for_discharge_at == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)
    assert case.invitation_due_at == case.ready_for_discharge_at + timedelta(days=3)
    [req] = out.sent
    assert isinstance(req, ConsentRequested) and req.case_id == case.id


async def test_a13_after_a03_cancels_the_case_and_a_repeated_a03_has_no_second_effect(db):
    out = Outbox()
    opened = await feed(db, hl7("A03", "M1"), out)
    assert await feed(db, hl7("A03", "M1"), out) is None  # the same event again (a redelivery)
    cancelled = await feed(db, hl7("A13", "M2", evn_recorded="20240301150000+0100"), out)
    assert cancelled is not None and cancelled.id == opened.id
    assert cancelled.state == "cancelled" and "cancelled the discharged notice" in cancelled.closed_reason
    assert len(out.sent) == 1 and [c.state for c in await cases(db)] == ["cancelled"]


async def test_a13_before_its_a03_means_the_late_a03_opens_nothing(db):
    out = Outbox()
    await feed(db, hl7("A13", "M2", evn_recorded="20240301150000+0100"), out)
    assert await feed(db, hl7("A03", "M1"), out) is None
    assert out.sent == [] and await cases(db) == []
    async with db.connect() as conn:
        stay = await SqlCaseRepository(conn).get_stay("1.2.752.129.2.1.4.1", "V12345")
    assert stay is not None and "discharged" in stay.cancelled and stay.discharged_at is None


async def test_ready_revoked_suspends_the_clock_and_ready_again_resumes_with_a_new_deadline(db):
    out = Outbox()
    opened = await feed(db, hl7("A16", "R1", evn_occurred="20240301090000+0100"), out)
    assert opened.ready_for_discharge_at == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    suspended = await feed(db, hl7("A25", "R2", evn_occurred="20240301120000+0100"), out)
    assert suspended.state == "suspended" and suspended.suspended_from == "consent_pending"
    resumed = await feed(db, hl7("A16", "R3", evn_occurred="20240304090000+0100"), out)
    assert resumed.state == "consent_pending"
    assert resumed.invitation_due_at == datetime(2024, 3, 7, 8, 0, tzinfo=UTC)
    assert len(out.sent) == 1  # one case, one consent request


async def test_death_in_the_discharge_closes_the_case(db):
    out = Outbox()
    await feed(db, hl7("A16", "R1", evn_occurred="20240301090000+0100"), out)
    closed = await feed(db, hl7("A03", "M1", pv1_36="20"), out)  # disposition 20: expired
    assert closed.state == "closed" and closed.closed_reason == "deceased"


async def test_unknown_kommun_is_refused_with_the_reason_and_nothing_is_recorded(db):
    with pytest.raises(UnknownRecipient, match="9999"):
        await feed(db, hl7("A03", "M1", kommun="9999"), Outbox())
    async with db.connect() as conn:
        assert (await conn.scalar(sa.text("SELECT count(*) FROM hospital_stays"))) == 0


async def test_no_kommun_in_the_message_is_a_clear_routing_error(db):
    raw = hl7("A03", "M1").replace(b"^SWE^H^^0180", b"^SWE^H^^")
    with pytest.raises(UnknownRecipient, match="no home kommun"):
        await feed(db, raw, Outbox())


async def test_when_no_sip_is_needed_the_stay_is_recorded_without_a_case(db):
    out = Outbox()
    assert await feed(db, hl7("A03", "M1"), out, assume_sip_needed=False) is None
    assert out.sent == []
    async with db.connect() as conn:
        [stay] = await SqlCaseRepository(conn).list_stays()
    assert stay.case_id is None and "not needed" in stay.note


async def test_a_child_case_is_marked_for_guardians(db):
    out = Outbox()
    pid3 = f"{CHILD}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
    case = await feed(db, hl7("A03", "M1", pid3=pid3), out)
    assert case.is_child and out.sent[0].is_child


async def test_medcom_discharge_with_a_danish_cpr_is_recorded_without_a_case(db):
    path = CONFORMANCE / "medcom-hospitalnotification" / "HospitalNotification_Ex_SLHJ_H.json"
    outcome = parse_message_bundle(path.read_bytes())
    assert outcome.accepted, outcome.body
    assert [e.kind for e in outcome.events] == ["discharged"]
    out = Outbox()
    for event in outcome.events:
        async with db.begin() as conn:
            await handlers.handle_stay_event(
                event, repo=SqlCaseRepository(conn), outbox=out, directory=DIRECTORY, clock=FixedClock(NOW)
            )
    assert out.sent == []
    async with db.connect() as conn:
        [stay] = await SqlCaseRepository(conn).list_stays()
    assert stay.patient_kind == "other"
    assert stay.case_id is None


async def test_readmission_suspends_the_sip_and_the_next_discharge_resumes_it(db):
    out = Outbox()
    opened = await feed(db, hl7("A16", "R1", evn_occurred="20240301090000+0100"), out)
    # the person is admitted again (another stay) while the SIP is under way: it is suspended
    suspended = await feed(db, hl7("A01", "R2", visit="V-2", evn_occurred="20240302100000+0100"), out)
    assert suspended.id == opened.id and suspended.state == "suspended"
    assert suspended.suspended_from == "consent_pending"
    # ready to leave again: the same SIP goes on, its clock counted from the new readiness
    resumed = await feed(db, hl7("A16", "R3", visit="V-2", evn_occurred="20240305090000+0100"), out)
    assert resumed.id == opened.id and resumed.state == "consent_pending"
    assert resumed.invitation_due_at == datetime(2024, 3, 8, 8, 0, tzinfo=UTC)
    assert len(out.sent) == 1 and len(await cases(db)) == 1  # one person, one SIP
