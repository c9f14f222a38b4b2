"""consent's use cases as stories, through the handler table with the in-memory unit of work.

No broker, no database: each message goes the way the generic subscriber takes it
(:func:`shared.handler_table.handle`: one unit of work, the inbox, the handler); what the service
would publish is what the unit of work committed to its outbox (``uow.sent``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from services.consent.adapters.memory import InMemoryConsentUnitOfWork
from services.consent.domain import ConsentRuleViolation
from services.consent.handlers import HANDLERS, AccessNotFiled, ConsentDeps
from shared.clock import FixedClock
from shared.contracts import (
    AccessRecorded,
    ConsentDecisionRequested,
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    RecordConsent,
)
from shared.handler_table import handle
from shared.topology import subscriptions_of
from tests.support.personnummer import ADULT, ADULTS

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
VC = "SE2321000016-VC001"  # the primary-care unit that owns the case
SOC = "SE2120001-SOC0180"  # social services
OTHER_PERSON = next(p for p in ADULTS if p != ADULT)


@pytest.fixture
def uow() -> InMemoryConsentUnitOfWork:
    """A clock at 20 November 2026, no requests, no consents, nothing in the outbox."""
    return InMemoryConsentUnitOfWork(ConsentDeps(clock=FixedClock(NOW)))


async def deliver(uow: InMemoryConsentUnitOfWork, msg) -> bool:
    """What the generic subscriber does with a delivery: False when the inbox has seen it."""
    return await handle("consent", HANDLERS, lambda: uow, msg)


def requested(case_id=None) -> ConsentRequested:
    return ConsentRequested(
        case_id=case_id or uuid4(), patient_identifier=ADULT, proposed_recipients=(VC, SOC),
        requested_by_hsa_id=VC, correlation_id="corr-1",
    )  # fmt: skip


def record(case_id, decision: str = "granted", person: str = ADULT) -> RecordConsent:
    return RecordConsent(case_id=case_id, patient_identifier=person, decision=decision, recorded_by_hsa_id=VC)


async def test_a_case_that_needs_consent_is_kept_waiting_for_it_once(uow):
    ask = requested()

    assert await deliver(uow, ask)
    assert not await deliver(uow, ask)  # redelivered: the inbox has it

    (waiting,) = await uow.consents.pending_requests()
    assert waiting.case_id == ask.case_id and waiting.proposed_recipients == (VC, SOC)
    assert waiting.requested_at == NOW and waiting.requested_by_hsa_id == VC
    assert uow.sent == []  # nothing to tell anyone yet


async def test_a_granted_consent_answers_the_request_and_is_published_once(uow):
    ask = requested()
    await deliver(uow, ask)
    cmd = record(ask.case_id)

    assert await deliver(uow, cmd)
    assert not await deliver(uow, cmd)

    (consent,) = await uow.consents.for_patient(ADULT)
    assert consent.decision == "granted" and consent.recipients == (VC, SOC)  # the proposed ones
    assert (await uow.consents.get_request(ask.case_id)).status == "answered"
    assert await uow.consents.pending_requests() == []
    (granted,) = uow.sent
    assert isinstance(granted, ConsentGranted)
    assert granted.consent_id == consent.id and granted.case_id == ask.case_id
    assert granted.correlation_id == "corr-1"  # the request's, carried on


async def test_a_declined_consent_is_published_as_declined(uow):
    ask = requested()
    await deliver(uow, ask)

    await deliver(uow, record(ask.case_id, decision="declined"))

    (declined,) = uow.sent
    assert isinstance(declined, ConsentDeclined) and declined.case_id == ask.case_id


async def test_a_consent_naming_another_person_than_the_case_changes_nothing(uow):
    ask = requested()
    await deliver(uow, ask)

    with pytest.raises(ConsentRuleViolation):
        await deliver(uow, record(ask.case_id, person=OTHER_PERSON))

    assert await uow.consents.for_patient(OTHER_PERSON) == []
    assert uow.sent == []
    assert (await uow.consents.get_request(ask.case_id)).status == "pending"  # rolled back


def access(**kw) -> AccessRecorded:
    return AccessRecorded(
        service="planning", outcome="permit", basis="covered", what="CarePlan/x", accessed_at=NOW,
        reader_hsa_id=SOC, reader_subject="user-7", **kw,
    )  # fmt: skip


async def test_a_read_in_planning_is_filed_under_the_person_of_its_case_once(uow):
    ask = requested()
    await deliver(uow, ask)
    read = access(case_id=ask.case_id)

    assert await deliver(uow, read)
    assert not await deliver(uow, read)

    (entry,) = uow.consents.audit.values()
    assert entry.patient_identifier == ADULT and entry.case_id == ask.case_id
    assert entry.recipient_hsa_id == SOC and entry.source == "planning" and entry.action == "read"


async def test_a_read_that_names_no_person_is_refused_and_nothing_is_filed(uow):
    with pytest.raises(AccessNotFiled):
        await deliver(uow, access(case_id=uuid4()))  # a case consent never heard of

    assert uow.consents.audit == {} and uow.inbox == set()


def test_the_table_covers_every_work_queue_of_consent_and_the_decisions_answer_apart():
    work_queues = {s.contract for s in subscriptions_of("consent")} - {ConsentDecisionRequested}
    assert set(HANDLERS) == work_queues
    assert ConsentDecisionRequested not in HANDLERS
