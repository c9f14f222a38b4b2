from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from services.consent import handlers
from services.consent.domain import (
    ConsentRecord,
    ConsentRequest,
    ConsentRuleViolation,
    check_new_consent,
)
from services.consent.fhir import consent_resource
from shared.clock import FixedClock
from shared.contracts import ConsentDeclined, ConsentGranted, ConsentRequested, RecordConsent
from shared.fhir import FhirValidationError, check_required_bindings
from tests.support.personnummer import ADULT, ADULTS, CHILD

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


class MemRepo:
    def __init__(self):
        self.records, self.requests = {}, {}

    async def add(self, r):
        self.records[r.id] = r

    async def get(self, cid):
        return self.records.get(cid)

    async def for_patient(self, pid):
        return [r for r in self.records.values() if r.patient_identifier == pid]

    async def add_request(self, req):
        if req.case_id in self.requests:
            return False
        self.requests[req.case_id] = req
        return True

    async def get_request(self, case_id):
        return self.requests.get(case_id)

    async def mark_answered(self, case_id, consent_id):
        import dataclasses

        self.requests[case_id] = dataclasses.replace(
            self.requests[case_id], status="answered", answered_by=consent_id
        )

    async def pending_requests(self):
        return [r for r in self.requests.values() if r.status == "pending"]


class MemOutbox:
    def __init__(self):
        self.sent = []

    async def send(self, m):
        self.sent.append(m)


def record(**kw) -> ConsentRecord:
    base = dict(
        id=uuid4(),
        patient_identifier=ADULT,
        case_id=None,
        decision="granted",
        purposes=("draw-up-plan", "send-invitation"),
        recipients=("SE-A", "SE-B"),
        given_by="patient",
        method="oral",
        recorded_by_hsa_id="SE-REC",
        recorded_at=NOW,
    )
    base.update(kw)
    return ConsentRecord(**base)


@pytest.mark.parametrize(
    ("rec", "recipient", "purpose", "at", "expected"),
    [
        (record(), "SE-A", "send-invitation", NOW, True),
        (record(), "SE-C", "send-invitation", NOW, False),  # not a named recipient
        (record(), "SE-A", "share-information", NOW, False),  # purpose not given
        (record(decision="declined"), "SE-A", "send-invitation", NOW, False),
        (record(status="withdrawn"), "SE-A", "send-invitation", NOW, False),
        (record(valid_until=NOW + timedelta(days=1)), "SE-A", "draw-up-plan", NOW, True),
        (record(valid_until=NOW), "SE-A", "draw-up-plan", NOW, False),  # expired at end date
    ],
)
def test_permits(rec, recipient, purpose, at, expected):
    assert rec.permits(recipient=recipient, purpose=purpose, at=at) is expected


def test_rules_refuse_what_cannot_be_recorded():
    with pytest.raises(ConsentRuleViolation, match="purpose"):
        check_new_consent(
            decision="granted", purposes=(), given_by="patient", is_child=False, valid_until=None, now=NOW
        )
    with pytest.raises(ConsentRuleViolation, match="past"):
        check_new_consent(
            decision="granted",
            purposes=("draw-up-plan",),
            given_by="patient",
            is_child=False,
            valid_until=NOW - timedelta(seconds=1),
            now=NOW,
        )
    with pytest.raises(ConsentRuleViolation, match="child"):
        check_new_consent(
            decision="granted",
            purposes=("draw-up-plan",),
            given_by="representative",
            is_child=True,
            valid_until=None,
            now=NOW,
        )


async def test_granted_consent_covers_proposed_recipients_and_publishes_decision():
    repo, outbox, clock = MemRepo(), MemOutbox(), FixedClock(NOW)
    case_id = uuid4()
    await handlers.request_consent(
        ConsentRequested(
            case_id=case_id,
            patient_identifier=ADULT,
            proposed_recipients=("SE-A", "SE-B"),
            correlation_id="corr-1",
        ),
        repo=repo,
        clock=clock,
    )
    rec = await handlers.record_consent(
        RecordConsent(
            case_id=case_id, patient_identifier=ADULT, decision="granted", recorded_by_hsa_id="SE-REC"
        ),
        repo=repo,
        outbox=outbox,
        clock=clock,
    )
    assert rec.recipients == ("SE-A", "SE-B")
    assert (await repo.get_request(case_id)).status == "answered"
    [event] = outbox.sent
    assert isinstance(event, ConsentGranted)
    assert event.case_id == case_id and event.consent_id == rec.id
    assert event.correlation_id == "corr-1"  # carried from the request


async def test_declined_consent_publishes_declined():
    repo, outbox = MemRepo(), MemOutbox()
    await handlers.record_consent(
        RecordConsent(patient_identifier=ADULTS[1], decision="declined", recorded_by_hsa_id="SE-REC"),
        repo=repo,
        outbox=outbox,
        clock=FixedClock(NOW),
    )
    assert [type(m) for m in outbox.sent] == [ConsentDeclined]


async def test_consent_for_other_person_than_the_case_is_refused():
    repo, outbox, clock = MemRepo(), MemOutbox(), FixedClock(NOW)
    case_id = uuid4()
    await handlers.request_consent(
        ConsentRequested(case_id=case_id, patient_identifier=ADULTS[0]), repo=repo, clock=clock
    )
    with pytest.raises(ConsentRuleViolation, match="another person"):
        await handlers.record_consent(
            RecordConsent(
                case_id=case_id, patient_identifier=ADULTS[1], decision="granted", recorded_by_hsa_id="SE-REC"
            ),
            repo=repo,
            outbox=outbox,
            clock=clock,
        )
    assert outbox.sent == []


async def test_repeated_request_changes_nothing():
    repo, clock = MemRepo(), FixedClock(NOW)
    cmd = ConsentRequested(case_id=uuid4(), patient_identifier=CHILD, is_child=True)
    assert await handlers.request_consent(cmd, repo=repo, clock=clock) is True
    assert await handlers.request_consent(cmd, repo=repo, clock=clock) is False
    assert len(await repo.pending_requests()) == 1


def test_fhir_consent_is_valid_r4_with_purposes_and_recipients():
    from fhir.resources.R4B.consent import Consent

    res = consent_resource(record(case_id=uuid4(), valid_until=NOW + timedelta(days=90)))
    model = Consent.model_validate(res)
    assert model.status == "active"
    assert model.provision.type == "permit"
    assert {c.code for c in model.provision.purpose} == {"draw-up-plan", "send-invitation"}
    assert [a.reference.identifier.value for a in model.provision.actor] == ["SE-A", "SE-B"]
    assert model.patient.identifier.value == ADULT
    declined = Consent.model_validate(consent_resource(record(decision="declined")))
    assert declined.provision.type == "deny"


def test_required_binding_check_names_the_element():
    from fhir.resources.R4B.consent import Consent

    res = consent_resource(record())
    model = Consent.model_validate({**res, "status": "bogus"})  # the library lets it through
    with pytest.raises(FhirValidationError) as err:
        check_required_bindings(model)
    assert err.value.element == "Consent.status"


def test_request_default_status():
    r = ConsentRequest(
        case_id=uuid4(),
        patient_identifier=ADULT,
        is_child=False,
        purposes=(),
        proposed_recipients=(),
        requested_at=NOW,
    )
    assert r.status == "pending"
