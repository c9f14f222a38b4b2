"""consent.access-recorded.v1: a read in planning or notify filed in the person's audit trail — the
person from the message or from its case, once per message, dead-lettered when nobody is named —
and consent.granted.v1 naming a child's guardians."""

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from faststream.rabbit import TestRabbitBroker

from services.consent import handlers
from services.consent.adapters.store import SqlConsentRepository, audit_events, metadata
from services.consent.app import create_app
from services.consent.domain import ConsentDetails, GuardianStatement
from services.consent.fhir import audit_event_resource
from services.consent.settings import ConsentSettings
from shared.clock import FixedClock
from shared.contracts import AccessRecorded, ConsentGranted, ConsentRequested, RecordConsent
from shared.errors import PermanentError
from tests.support.personnummer import ADULT, ADULTS, CHILD

NOW = datetime(2026, 11, 20, tzinfo=UTC)
VC = "SE2321000016-VC001"


@pytest.fixture
async def rt(tmp_path):
    app = create_app(ConsentSettings(data_dir=str(tmp_path)), clock=FixedClock(NOW))
    rt = app.state.runtime
    async with rt.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield rt
    await rt.engine.dispose()


def access(**kw) -> AccessRecorded:
    return AccessRecorded(
        **{"service": "planning", "outcome": "permit", "basis": "covered", "what": "CarePlan/x",
           "accessed_at": NOW, "reader_hsa_id": VC, "reader_subject": "user-7", **kw}
    )  # fmt: skip


async def rows(rt) -> list:
    async with rt.engine.connect() as conn:
        return list((await conn.execute(audit_events.select())).all())


async def test_a_read_elsewhere_is_filed_once_under_the_person_even_when_redelivered(rt):
    msg = access(patient_identifier=ADULT)
    async with TestRabbitBroker(rt.broker) as br:
        for _ in range(2):  # redelivered: the same message id
            await br.publish(msg.model_dump(mode="json"), exchange=msg.exchange, routing_key=msg.routing_key)
    [row] = await rows(rt)
    assert (row.patient_identifier, row.action, row.outcome, row.basis, row.reason) == (
        ADULT, "read", "permit", "covered", "CarePlan/x",
    )  # fmt: skip
    assert (row.recipient_hsa_id, row.requested_by, row.source) == (VC, "user-7", "planning")
    # and as an R4 AuditEvent: a RESTful read in planning by the organisation
    async with rt.engine.connect() as conn:
        entry = await SqlConsentRepository(conn).get_audit(UUID(row.id))
    event = audit_event_resource(entry)
    assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == "read"
    assert event["action"] == "R" and event["source"]["observer"]["display"] == "sip-suite planning service"
    assert event["agent"][0]["who"]["identifier"]["value"] == VC


async def test_the_person_of_a_case_is_found_and_an_unknown_one_is_refused_permanently(rt):
    case_id = uuid4()
    async with rt.unit_of_work() as uow:
        repo = SqlConsentRepository(uow.conn)
        await handlers.request_consent(
            ConsentRequested(case_id=case_id, patient_identifier=ADULTS[5], requested_by_hsa_id=VC),
            repo=repo,
            clock=FixedClock(NOW),
        )
        entry = await handlers.record_access(
            access(
                case_id=case_id, action="search", reader_kind="person", reader_hsa_id=None, basis="own-data"
            ),
            repo=repo,
        )
        assert entry.patient_identifier == ADULTS[5] and entry.recipient_hsa_id is None
        with pytest.raises(PermanentError, match="unknown to consent"):
            await handlers.record_access(access(case_id=uuid4()), repo=repo)
        with pytest.raises(PermanentError, match="neither"):
            await handlers.record_access(access(), repo=repo)
    search = audit_event_resource(entry)
    assert search["subtype"][0]["code"] == "search-type" and search["action"] == "E"


class Outbox:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, message: object) -> None:
        self.sent.append(message)


async def test_a_childs_granted_consent_names_its_guardians(rt):
    g1, g2 = ADULTS[3], ADULTS[4]
    outbox = Outbox()
    async with rt.unit_of_work() as uow:
        await handlers.record_consent(
            RecordConsent(
                patient_identifier=CHILD, decision="granted", given_by="guardians", recorded_by_hsa_id=VC
            ),
            repo=SqlConsentRepository(uow.conn),
            outbox=outbox,
            clock=FixedClock(NOW),
            details=ConsentDetails(
                custody="joint",
                child_view="agrees",
                guardians=(GuardianStatement("consents", g1), GuardianStatement("consents", g2)),
            ),
        )
    [granted] = outbox.sent
    assert isinstance(granted, ConsentGranted) and granted.guardian_identifiers == (g1, g2)


def test_an_older_sqlite_database_gets_the_case_owner_and_audit_source_columns(tmp_path):
    from services.consent.adapters.store import upgrade_schema

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE consent_requests (case_id VARCHAR(36) PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE audit_events (id VARCHAR(36) PRIMARY KEY)"))
        upgrade_schema(conn)
        upgrade_schema(conn)  # idempotent
        inspector = sa.inspect(conn)
        assert "requested_by_hsa_id" in {c["name"] for c in inspector.get_columns("consent_requests")}
        assert "source" in {c["name"] for c in inspector.get_columns("audit_events")}
    engine.dispose()
