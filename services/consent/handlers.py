"""Consent use cases. They orchestrate the domain and storage and emit events; no transport here."""

from __future__ import annotations

from uuid import UUID, uuid4

from services.consent.domain import (
    ConsentRecord,
    ConsentRequest,
    ConsentRuleViolation,
    check_new_consent,
    effective_recipients,
)
from services.consent.ports import ConsentRepository, Outbox
from shared.clock import Clock
from shared.contracts import ConsentDeclined, ConsentGranted, ConsentRequested, RecordConsent
from shared.identifiers import parse_person_identifier


async def request_consent(cmd: ConsentRequested, *, repo: ConsentRepository, clock: Clock) -> bool:
    """Remember that a case needs the person's consent. A repeated request changes nothing."""
    return await repo.add_request(
        ConsentRequest(
            case_id=cmd.case_id,
            patient_identifier=cmd.patient_identifier,
            is_child=cmd.is_child,
            purposes=tuple(cmd.purposes),
            proposed_recipients=tuple(cmd.proposed_recipients),
            requested_at=clock.now(),
            correlation_id=cmd.correlation_id,
        )
    )


async def record_consent(
    cmd: RecordConsent,
    *,
    repo: ConsentRepository,
    outbox: Outbox,
    clock: Clock,
    consent_id: UUID | None = None,
) -> ConsentRecord:
    """Record a granted or declined consent and publish the decision."""
    now = clock.now()
    request = await repo.get_request(cmd.case_id) if cmd.case_id else None
    if request is not None and request.patient_identifier != cmd.patient_identifier:
        raise ConsentRuleViolation("the case belongs to another person than the consent names")
    is_child = parse_person_identifier(cmd.patient_identifier).age_on(now.date()) < 18
    check_new_consent(
        decision=cmd.decision,
        purposes=tuple(cmd.purposes),
        given_by=cmd.given_by,
        is_child=is_child,
        valid_until=cmd.valid_until,
        now=now,
    )
    record = ConsentRecord(
        id=consent_id or uuid4(),
        patient_identifier=cmd.patient_identifier,
        case_id=cmd.case_id,
        decision=cmd.decision,
        purposes=tuple(cmd.purposes),
        recipients=effective_recipients(tuple(cmd.recipients), request),
        given_by=cmd.given_by,
        method=cmd.method,
        recorded_by_hsa_id=cmd.recorded_by_hsa_id,
        recorded_at=now,
        valid_until=cmd.valid_until,
    )
    correlation_id = cmd.correlation_id or (request.correlation_id if request else None)
    await repo.add(record)
    if request is not None:
        await repo.mark_answered(request.case_id, record.id)
    if record.decision == "granted":
        await outbox.send(
            ConsentGranted(
                consent_id=record.id,
                case_id=record.case_id,
                patient_identifier=record.patient_identifier,
                purposes=record.purposes,
                recipients=record.recipients,
                valid_until=record.valid_until,
                correlation_id=correlation_id,
            )
        )
    else:
        await outbox.send(
            ConsentDeclined(
                consent_id=record.id,
                case_id=record.case_id,
                patient_identifier=record.patient_identifier,
                correlation_id=correlation_id,
            )
        )
    return record
