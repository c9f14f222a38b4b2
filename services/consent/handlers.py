"""Consent use cases. They orchestrate the domain and storage and emit events; no transport here.

Who may call them is decided before, from the verified token, in :mod:`services.consent.access`; a
use case takes the acting party as given (``by``: an HSA-id, or ``person``/``guardian`` when the
person or a guardian withdraws with their own e-ID).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID, uuid4, uuid5

from services.consent.domain import (
    AuditEntry,
    CancelReason,
    ConsentDetails,
    ConsentRecord,
    ConsentRequest,
    ConsentRuleViolation,
    ConsentStateConflict,
    check_new_consent,
    check_withdrawal,
    effective_recipients,
    is_child_on,
)
from services.consent.policy import DecisionQuery, DecisionResult, decide
from services.consent.ports import ConsentRepository, Outbox
from shared.clock import Clock
from shared.contracts import (
    AccessRecorded,
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    ConsentWithdrawn,
    Contract,
    RecordConsent,
)
from shared.errors import PermanentError
from shared.unit_of_work import Handler, UnitOfWork


class ConsentNotFound(LookupError):
    pass


class AccessNotFiled(PermanentError):
    """An audited read names no person consent can file it under (dead-lettered with this reason)."""


_ACCESS_NS = UUID("0b6f4a52-8f0e-4d38-9a57-51f1d1f3b2c4")


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
            requested_by_hsa_id=cmd.requested_by_hsa_id,
        )
    )


async def record_consent(
    cmd: RecordConsent,
    *,
    repo: ConsentRepository,
    outbox: Outbox,
    clock: Clock,
    consent_id: UUID | None = None,
    details: ConsentDetails | None = None,
) -> ConsentRecord:
    """Record a granted or declined consent and publish the decision."""
    details = details or ConsentDetails()
    now = clock.now()
    request = await repo.get_request(cmd.case_id) if cmd.case_id else None
    if request is not None and request.patient_identifier != cmd.patient_identifier:
        raise ConsentRuleViolation("the case belongs to another person than the consent names")
    check_new_consent(
        decision=cmd.decision,
        purposes=tuple(cmd.purposes),
        given_by=cmd.given_by,
        is_child=is_child_on(cmd.patient_identifier, now),
        valid_until=cmd.valid_until,
        now=now,
        valid_from=details.valid_from,
        custody=details.custody,
        guardians=details.guardians,
        child_view=details.child_view,
        excluded_categories=details.excluded_categories,
    )
    recipients = effective_recipients(tuple(cmd.recipients), request)
    record = ConsentRecord(
        id=consent_id or uuid4(),
        patient_identifier=cmd.patient_identifier,
        case_id=cmd.case_id,
        decision=cmd.decision,
        purposes=tuple(cmd.purposes),
        recipients=tuple(r for r in recipients if r not in details.excluded_organisations),
        given_by=cmd.given_by,
        method=cmd.method,
        recorded_by_hsa_id=cmd.recorded_by_hsa_id,
        recorded_at=now,
        valid_until=cmd.valid_until,
        valid_from=details.valid_from,
        excluded_organisations=details.excluded_organisations,
        excluded_categories=details.excluded_categories,
        custody=details.custody,
        guardians=details.guardians,
        child_view=details.child_view,
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
                guardian_identifiers=tuple(g.identifier for g in record.guardians if g.identifier),
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


async def _load(repo: ConsentRepository, consent_id: UUID) -> ConsentRecord:
    record = await repo.get(consent_id, for_update=True)
    if record is None:
        raise ConsentNotFound("no such consent")
    return record


async def withdraw_consent(
    consent_id: UUID,
    *,
    by_hsa_id: str,
    repo: ConsentRepository,
    outbox: Outbox,
    clock: Clock,
    at: datetime | None = None,
    correlation_id: str | None = None,
    requested_by: str | None = None,
) -> tuple[ConsentRecord, bool]:
    """Withdraw (återkallelse): immediate and irreversible; the record stays as history.

    ``by_hsa_id`` is who recorded the withdrawal: the organisation's HSA-id, or ``person`` /
    ``guardian`` when the person or a guardian withdrew it with their own e-ID (it is stored as the
    record's ``status_changed_by_hsa_id``); ``requested_by`` (default ``by_hsa_id``) goes to the audit
    record. ``at`` may say when the person withdrew it if that was earlier than now (never later). A
    second withdrawal changes nothing and returns the record with ``False``.
    """
    now = clock.now()
    record = await _load(repo, consent_id)
    if record.status == "withdrawn":
        return record, False
    check_withdrawal(record)
    effective = at or now
    if effective > now:
        raise ConsentRuleViolation("a withdrawal takes effect at once: withdrawn_at cannot be in the future")
    if effective < record.recorded_at:
        raise ConsentRuleViolation("withdrawn_at is before the consent was recorded")
    after = dataclasses.replace(
        record,
        status="withdrawn",
        status_changed_at=effective,
        status_changed_by_hsa_id=by_hsa_id,
        status_reason="withdrawn-by-person",
        version=record.version + 1,
    )
    if not await repo.update_status(record, after, "withdrawn"):
        raise ConsentStateConflict("the consent changed meanwhile; read it again")
    await repo.add_audit(
        AuditEntry(
            id=uuid4(),
            recorded_at=now,
            patient_identifier=record.patient_identifier,
            action="withdrawal",
            outcome="done",
            reason="withdrawn-by-person",
            basis="none",
            channel="http",
            consent_id=record.id,
            case_id=record.case_id,
            recipient_hsa_id=None if by_hsa_id in ("person", "guardian") else by_hsa_id,
            requested_by=requested_by or by_hsa_id,
            correlation_id=correlation_id,
        )
    )
    await outbox.send(
        ConsentWithdrawn(
            consent_id=record.id,
            case_id=record.case_id,
            patient_identifier=record.patient_identifier,
            cause="withdrawal",
            effective_at=effective,
            purposes=record.purposes,
            recipients=record.recipients,
            correlation_id=correlation_id,
        )
    )
    return after, True


async def cancel_consent(
    consent_id: UUID,
    *,
    by_hsa_id: str,
    reason: CancelReason,
    repo: ConsentRepository,
    outbox: Outbox,
    clock: Clock,
    correlation_id: str | None = None,
) -> tuple[ConsentRecord, bool]:
    """Cancel (makulering) a wrongly registered consent; audited. Not the person's withdrawal.

    The record is kept (status ``cancelled``, FHIR ``entered-in-error``) and ignored by decisions.
    A granted consent that was still active is announced as withdrawn (``cause=cancellation``); a
    consent request it answered is pending again, so the right decision can be recorded.
    """
    now = clock.now()
    record = await _load(repo, consent_id)
    if record.status == "cancelled":
        return record, False
    after = dataclasses.replace(
        record,
        status="cancelled",
        status_changed_at=now,
        status_changed_by_hsa_id=by_hsa_id,
        status_reason=reason,
        version=record.version + 1,
    )
    if not await repo.update_status(record, after, "cancelled"):
        raise ConsentStateConflict("the consent changed meanwhile; read it again")
    await repo.add_audit(
        AuditEntry(
            id=uuid4(),
            recorded_at=now,
            patient_identifier=record.patient_identifier,
            action="cancellation",
            outcome="done",
            reason=reason,
            basis="none",
            channel="http",
            consent_id=record.id,
            case_id=record.case_id,
            requested_by=by_hsa_id,
            correlation_id=correlation_id,
        )
    )
    if record.case_id is not None:
        await repo.reopen_request(record.case_id, record.id)
    if record.status == "active" and record.decision == "granted":
        await outbox.send(
            ConsentWithdrawn(
                consent_id=record.id,
                case_id=record.case_id,
                patient_identifier=record.patient_identifier,
                cause="cancellation",
                effective_at=now,
                purposes=record.purposes,
                recipients=record.recipients,
                correlation_id=correlation_id,
            )
        )
    return after, True


async def decide_and_audit(
    query: DecisionQuery,
    *,
    clock: Clock,
    channel: str,
    repo: ConsentRepository | None = None,
    records_of: Callable[[str], Awaitable[list[ConsentRecord]]] | None = None,
    audit: Callable[[AuditEntry], Awaitable[None]] | None = None,
    requested_by: str | None = None,
    correlation_id: str | None = None,
) -> tuple[DecisionResult, UUID]:
    """Decide (pure) on the person's records — one indexed query — and audit the answer.

    Reads through ``records_of`` (or ``repo``); ``audit`` stores the audit record durably before
    this returns (default: ``repo.add_audit`` in the caller's transaction; the service passes its
    group-committing writer and reads on a connection of its own that is closed by then).
    """
    load = records_of or (repo.for_patient if repo is not None else None)
    store = audit or (repo.add_audit if repo is not None else None)
    if load is None or store is None:
        raise TypeError("decide_and_audit needs a repo, or records_of and audit")
    records = await load(query.patient_identifier)
    result = decide(query, records)
    audit_id = uuid4()
    await store(
        AuditEntry(
            id=audit_id,
            recorded_at=clock.now(),
            patient_identifier=query.patient_identifier,
            action="decision",
            outcome=result.outcome,
            reason=result.reason,
            basis=result.basis,
            channel=channel,
            recipient_hsa_id=query.recipient,
            category=query.category,
            purpose=query.purpose,
            consent_id=result.consent_id,
            case_id=query.case_id,
            decision_at=query.at,
            requested_by=requested_by,
            correlation_id=correlation_id,
        )
    )
    return result, audit_id


async def record_access(msg: AccessRecorded, *, repo: ConsentRepository) -> AuditEntry:
    """File a read in planning or notify (``consent.access-recorded.v1``) in the person's audit trail.

    The person is the message's, or the person of its case (the consent request, or a consent
    recorded for it); when neither is known the message is refused permanently
    (:class:`AccessNotFiled`: dead-lettered with the reason). The entry's id is derived from the
    message id, so a redelivery can never file it twice.
    """
    patient = msg.patient_identifier
    if patient is None and msg.case_id is not None:
        patient = await repo.patient_of_case(msg.case_id)
    if patient is None:
        raise AccessNotFiled(
            "access-recorded names no person: no patient_identifier, and its case_id is unknown to consent"
            if msg.case_id is not None
            else "access-recorded names no person: neither patient_identifier nor case_id"
        )
    entry = AuditEntry(
        id=uuid5(_ACCESS_NS, str(msg.message_id)),
        recorded_at=msg.accessed_at,
        patient_identifier=patient,
        action=msg.action,
        outcome=msg.outcome,
        reason=msg.what,
        basis=msg.basis,
        channel="http",
        recipient_hsa_id=msg.reader_hsa_id if msg.reader_kind in ("organisation", "operator") else None,
        case_id=msg.case_id,
        requested_by=msg.reader_subject,
        correlation_id=msg.correlation_id,
        source=msg.service,
    )
    await repo.add_audit(entry)
    return entry


# ---- the handler table: each called as handler(uow, msg) by the shared generic subscriber ----------
@dataclass(frozen=True)
class ConsentDeps:
    """What the handlers need besides the repository, bound once in ``app.py``."""

    clock: Clock


class ConsentUnitOfWork(UnitOfWork, Protocol):
    """consent's unit of work: the inbox and outbox (``send``), its consents, its dependencies (SQL:
    ``adapters/unit_of_work.py``; in memory, for handler tests: ``adapters/memory.py``)."""

    @property
    def consents(self) -> ConsentRepository: ...

    @property
    def deps(self) -> ConsentDeps: ...


# The subscriber's AsyncAPI description is the handler's docstring (shared.handler_table); those
# without one had none, so they have a comment instead.
async def consent_requested(uow: ConsentUnitOfWork, cmd: ConsentRequested) -> None:
    # keep the case's request: its owner and participants (request_consent)
    await request_consent(cmd, repo=uow.consents, clock=uow.deps.clock)


async def consent_to_record(uow: ConsentUnitOfWork, cmd: RecordConsent) -> None:
    # the command path for trusted systems (the HTTP path authorizes from the token): record_consent
    await record_consent(cmd, repo=uow.consents, outbox=uow, clock=uow.deps.clock)


async def access_recorded(uow: ConsentUnitOfWork, msg: AccessRecorded) -> None:
    """File a read in planning or notify in the person's audit trail (once per message)."""
    await record_access(msg, repo=uow.consents)


COMMAND_HANDLERS: dict[type[Contract], Handler[ConsentUnitOfWork]] = {
    ConsentRequested: consent_requested,
    RecordConsent: consent_to_record,
}
EVENT_HANDLERS: dict[type[Contract], Handler[ConsentUnitOfWork]] = {
    AccessRecorded: access_recorded,
}
#: what the generic subscriber serves (the request/reply ``consent.decide.v1`` answers; it has its own)
HANDLERS: dict[type[Contract], Handler[ConsentUnitOfWork]] = {**COMMAND_HANDLERS, **EVENT_HANDLERS}
