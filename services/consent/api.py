"""HTTP API of consent: record, withdraw and cancel consents; read them (plain JSON and FHIR Consent,
R4 by default, R5 on request, with history); decide "may X receive Y"; read the audit log.

Every route carries its authorization rule (``openapi_extra``, :data:`services.consent.access.RULES`)
and asks :mod:`services.consent.access` — from the verified token only — before it answers: 401
without a caller, 403 (an OperationOutcome ``forbidden`` on FHIR paths) or a filtered answer.
``recorded_by_hsa_id`` / ``cancelled_by_hsa_id`` in a body are optional and must then be the token's
HSA-id; the stored actor is always the token's. Every read and search of a person's data — consents
and the audit trail itself, permitted or refused — is written to the audit log (committed) before
the answer leaves.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid5

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from services.consent import access, handlers
from services.consent.access import RULES, Denied
from services.consent.adapters.fhir import (
    FhirVersion,
    audit_event_resource,
    audit_events,
    consent_history,
    consent_resource,
    validated_bundle,
)
from services.consent.adapters.store import AuditWriter, SqlConsentRepository, records_reader
from services.consent.domain import (
    AuditEntry,
    CancelReason,
    ChildView,
    ConsentDetails,
    ConsentRecord,
    ConsentRequest,
    ConsentRuleViolation,
    ConsentStateConflict,
    Custody,
    GuardianStatement,
    Stance,
)
from services.consent.policy import DecisionQuery
from shared.auth import Caller, current_caller
from shared.clock import Clock
from shared.contracts import (
    ConsentDecisionReply,
    ConsentPurpose,
    HsaId,
    InformationCategory,
    PersonId,
    RecordConsent,
)
from shared.fhir import FHIR_JSON, fhir_json, outcome_response
from shared.fhir_rest import (
    FhirError,
    SearchParam,
    check_if_match,
    fhir_route,
    frozen,
    parse_search,
    searchset,
)
from shared.fhir_rest import capability_statement as generated_statement
from shared.identifiers import mask
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime
from shared.timestamps import Timestamp

_IDEMPOTENCY_NS = UUID("6f6b0b7e-3c1e-4d7e-9a53-6a1f1c0e5a11")
_PATIENT_DOC = "personnummer; required for organisations, a person's own by default"


class GuardianIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stance: Stance = Field(description="consents | objects — one guardian objecting blocks")
    identifier: PersonId | None = Field(default=None, description="The guardian's personnummer, if known")


class ConsentIn(BaseModel):
    """Body of POST /consents. Oral or written; who gave it; for which purposes and recipients."""

    model_config = ConfigDict(extra="forbid")

    case_id: UUID | None = None
    patient_identifier: PersonId
    decision: Literal["granted", "declined"]
    purposes: tuple[ConsentPurpose, ...] = ("draw-up-plan", "share-information", "send-invitation")
    recipients: tuple[HsaId, ...] = Field(
        default=(), description="Organisations covered; empty = those the case proposed"
    )
    given_by: Literal["patient", "guardians", "representative"] = "patient"
    method: Literal["oral", "written"] = "oral"
    recorded_by_hsa_id: HsaId | None = Field(
        default=None,
        description="Optional; when given it must be the calling organisation (the token's HSA-id), "
        "which is always the one recorded",
    )
    valid_until: Timestamp | None = None
    valid_from: Timestamp | None = Field(default=None, description="Start of validity; default: now")
    excluded_organisations: tuple[HsaId, ...] = Field(
        default=(), description="Organisations the consent does not cover ('not the school')"
    )
    excluded_categories: tuple[InformationCategory, ...] = Field(
        default=(),
        description="Information categories not covered ('not my psychiatric history'): sip-plan, "
        "care-needs, health-data, psychiatric, substance-use, medication, social-services",
    )
    custody: Custody | None = Field(default=None, description="For a child: joint (both guardians) or sole")
    guardians: tuple[GuardianIn, ...] = Field(default=(), description="Each guardian's statement (child)")
    child_view: ChildView | None = Field(
        default=None, description="The child's own view (required with guardians)"
    )


class GuardianOut(BaseModel):
    stance: str
    identifier: str | None


class ConsentOut(BaseModel):
    id: UUID
    patient_identifier: str
    case_id: UUID | None
    decision: str
    purposes: list[str]
    recipients: list[str]
    given_by: str
    method: str
    recorded_by_hsa_id: str
    recorded_at: datetime
    valid_until: datetime | None
    status: str
    valid_from: datetime
    excluded_organisations: list[str] = []
    excluded_categories: list[str] = []
    custody: str | None = None
    guardians: list[GuardianOut] = []
    child_view: str | None = None
    status_changed_at: datetime | None = None
    status_changed_by_hsa_id: str | None = Field(
        default=None,
        description="Who withdrew or cancelled it: an organisation's HSA-id, or 'person' / 'guardian' "
        "when the person or a guardian withdrew it with their own e-ID",
    )
    status_reason: str | None = None
    effective_status: str = Field(description="active | pending | expired | withdrawn | cancelled, now")
    version: int = 1

    @classmethod
    def of(cls, r: ConsentRecord, now: datetime) -> ConsentOut:
        return cls(
            id=r.id,
            patient_identifier=r.patient_identifier,
            case_id=r.case_id,
            decision=r.decision,
            purposes=list(r.purposes),
            recipients=list(r.recipients),
            given_by=r.given_by,
            method=r.method,
            recorded_by_hsa_id=r.recorded_by_hsa_id,
            recorded_at=r.recorded_at,
            valid_until=r.valid_until,
            status=r.status,
            valid_from=r.starts_at,
            excluded_organisations=list(r.excluded_organisations),
            excluded_categories=list(r.excluded_categories),
            custody=r.custody,
            guardians=[GuardianOut(stance=g.stance, identifier=g.identifier) for g in r.guardians],
            child_view=r.child_view,
            status_changed_at=r.status_changed_at,
            status_changed_by_hsa_id=r.status_changed_by_hsa_id,
            status_reason=r.status_reason,
            effective_status=r.effective_status(now),
            version=r.version,
        )


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recorded_by_hsa_id: HsaId | None = Field(
        default=None,
        description="Optional; when given it must be the calling organisation (the token's HSA-id). "
        "A person or guardian withdrawing with their own e-ID leaves it out",
    )
    withdrawn_at: Timestamp | None = Field(
        default=None, description="When the person withdrew it, if earlier than now (never later)"
    )
    method: Literal["oral", "written"] = "oral"


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cancelled_by_hsa_id: HsaId | None = Field(
        default=None, description="Optional; when given it must be the calling organisation (the token's)"
    )
    reason: CancelReason = Field(description="wrong-person | registration-error | duplicate | not-given")


class DecisionIn(BaseModel):
    """May ``recipient_hsa_id`` receive ``category`` about the person for ``purpose`` at ``at``?"""

    model_config = ConfigDict(extra="forbid")

    patient_identifier: PersonId
    recipient_hsa_id: HsaId
    category: InformationCategory
    purpose: ConsentPurpose
    at: Timestamp | None = Field(default=None, description="Default: now")
    case_id: UUID | None = None
    requested_by: str | None = Field(default=None, max_length=128, description="Asking system or unit")


class AuditOut(BaseModel):
    """One line of "who received, read (or was refused) what about me"."""

    id: UUID
    recorded_at: datetime
    action: str = Field(description="decision | withdrawal | cancellation | read | search")
    outcome: str = Field(description="permit | deny | done")
    reason: str = Field(description="The reason code; for a read or search, what was read")
    basis: str = Field(
        description="consent | lus-logistics | none (decisions); owner | participant | covered | "
        "operator | own-data | guardian | hospital | none (reads)"
    )
    recipient_hsa_id: str | None = Field(
        description="The organisation that received or read (None: the person or a guardian)"
    )
    category: str | None
    purpose: str | None
    consent_id: UUID | None
    case_id: UUID | None
    decision_at: datetime | None
    requested_by: str | None
    channel: str
    source: str = Field(default="consent", description="The service where it happened")

    @classmethod
    def of(cls, e: AuditEntry) -> AuditOut:
        return cls(
            id=e.id,
            recorded_at=e.recorded_at,
            action=e.action,
            outcome=e.outcome,
            reason=e.reason,
            basis=e.basis,
            recipient_hsa_id=e.recipient_hsa_id,
            category=e.category,
            purpose=e.purpose,
            consent_id=e.consent_id,
            case_id=e.case_id,
            decision_at=e.decision_at,
            requested_by=e.requested_by,
            channel=e.channel,
            source=e.source or "consent",
        )


class ConsentRequestOut(BaseModel):
    case_id: UUID
    patient: str = Field(description="Masked identifier")
    is_child: bool
    purposes: list[str]
    proposed_recipients: list[str]
    requested_at: datetime
    status: str


class PersonIdModel(BaseModel):
    v: PersonId


_VERSION_ALIASES: dict[str, FhirVersion] = {
    "4.0": "4.0",
    "4.0.1": "4.0",
    "r4": "4.0",
    "5.0": "5.0",
    "5.0.0": "5.0",
    "r5": "5.0",
}


class UnsupportedFhirVersion(ValueError):
    pass


def fhir_version(request: Request) -> FhirVersion:
    """R4 unless asked for R5: ``?_fhirVersion=5.0`` or ``Accept: application/fhir+json; fhirVersion=5.0``."""
    asked = request.query_params.get("_fhirVersion")
    if asked is None:
        m = re.search(r"fhirVersion\s*=\s*\"?([0-9.]+|[rR][45])", request.headers.get("accept", ""))
        asked = m.group(1) if m else None
    if asked is None:
        return "4.0"
    version = _VERSION_ALIASES.get(asked.strip().lower())
    if version is None:
        raise UnsupportedFhirVersion(asked)
    return version


def fhir_response(
    resource: dict[str, Any], version: FhirVersion, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(resource, media_type=f"{FHIR_JSON}; fhirVersion={version}", headers=headers)


def _patient_param(raw: str) -> str:
    """``patient=<personnummer>`` or a FHIR token ``<system>|<value>``; validated, 12 digits."""
    value = raw.rsplit("|", 1)[-1]
    return PersonIdModel(v=value).v


def reply_of(result: Any, audit_id: UUID, at: datetime) -> ConsentDecisionReply:
    return ConsentDecisionReply(
        decision=result.outcome,
        reason=result.reason,
        basis=result.basis,
        consent_id=result.consent_id,
        audit_event_id=audit_id,
        decided_for=at,
    )


VERSIONS = ("4.0", "5.0")
CONSENT_SEARCH = (
    SearchParam(
        "patient", "reference", "The person: personnummer, or <system>|<value>; a person's own by default"
    ),
    SearchParam("status", "token", "active, inactive, rejected, entered-in-error (comma = or)"),
)
AUDIT_SEARCH = (
    SearchParam(
        "patient", "reference", "The person: personnummer, or <system>|<value>; a person's own by default"
    ),
)


def build_router(
    runtime: ServiceRuntime, clock: Clock, audit_writer: AuditWriter, base_url: str = "http://127.0.0.1:8081",
    security: str = "",
) -> APIRouter:  # fmt: skip
    router = APIRouter()
    base = base_url.rstrip("/")
    records_of = records_reader(runtime.engine)

    def caller_of(request: Request) -> Caller:
        return access.authenticated(current_caller(request))

    async def audited(*entries: AuditEntry) -> None:
        """Committed before the answer leaves (group commit; never only in memory)."""
        await audit_writer.write_all(list(entries))

    async def consents_seen_by(caller: Caller, pid: str, now: datetime) -> list[ConsentRecord]:
        """The person's consents the caller may see (filtered before any page), the search audited:
        the one search behind ``GET /consents`` and ``GET /fhir/Consent``."""
        async with runtime.engine.connect() as conn:
            repo = SqlConsentRepository(conn)
            records = await repo.for_patient(pid)
            requests = {r.case_id: r for r in await repo.requests_for_patient(pid)}
        guardians = access.guardians_of(records, now) if caller.is_person else frozenset()
        seen, verdict = access.search_consents(caller, pid, records, requests, guardians, now)
        await audited(
            access.read_entry(
                caller, patient=pid, action="search", verdict=verdict, what="Consent?patient", now=now
            )
        )
        return seen

    async def _case_request(repo: SqlConsentRepository, case_id: UUID | None) -> ConsentRequest | None:
        return await repo.get_request(case_id) if case_id is not None else None

    async def _readable(request: Request, cid: UUID, what: str) -> ConsentRecord | None:
        """The consent if the caller may read it (audited either way); None: no such consent."""
        caller = caller_of(request)
        now = clock.now()
        async with runtime.engine.connect() as conn:  # closed before the audit write (SQLite)
            repo = SqlConsentRepository(conn)
            record = await repo.get(cid)
            if record is None:
                return None
            case_request = await _case_request(repo, record.case_id)
            guardians = (
                access.guardians_of(await repo.for_patient(record.patient_identifier), now)
                if caller.is_person
                else frozenset()
            )
        verdict = access.read_consent(caller, record, case_request, guardians, now)
        await audited(
            access.read_entry(
                caller, patient=record.patient_identifier, action="read", verdict=verdict, what=what,
                now=now, consent_id=record.id, case_id=record.case_id,
            )
        )  # fmt: skip
        if not verdict.permit:
            raise Denied(403, verdict.detail)
        return record

    @router.post(
        "/consents",
        status_code=201,
        response_model=ConsentOut,
        tags=["consents"],
        summary="Record a consent decision (granted or declined)",
        responses={
            403: {"description": "Not the case's owner or a participant, or recorded_by_hsa_id is not yours"},
            422: {"description": "The consent breaks a rule; `detail` says which"},
        },
        openapi_extra=RULES["record"],
    )
    async def post_consent(
        body: ConsentIn,
        request: Request,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> ConsentOut:
        """The recorder is always the calling organisation (the token's HSA-id)."""
        caller = caller_of(request)
        async with runtime.unit_of_work() as uow:
            repo = SqlConsentRepository(uow.conn)
            case_request = await _case_request(repo, body.case_id)
            recorder = access.may_record(caller, body.case_id, case_request, body.recorded_by_hsa_id)
            # an idempotency key is the recorder's own: another organisation's key never finds it
            consent_id = uuid5(_IDEMPOTENCY_NS, f"{recorder}\n{idempotency_key}") if idempotency_key else None
            if consent_id is not None and (existing := await repo.get(consent_id)):
                response.status_code = 200
                return ConsentOut.of(existing, clock.now())
            fields = body.model_dump(
                exclude={
                    "valid_from",
                    "excluded_organisations",
                    "excluded_categories",
                    "custody",
                    "guardians",
                    "child_view",
                }
            )
            fields["recorded_by_hsa_id"] = recorder
            details = ConsentDetails(
                valid_from=body.valid_from,
                excluded_organisations=body.excluded_organisations,
                excluded_categories=body.excluded_categories,
                custody=body.custody,
                guardians=tuple(GuardianStatement(g.stance, g.identifier) for g in body.guardians),
                child_view=body.child_view,
            )
            try:
                cmd = RecordConsent(**fields)
                record = await handlers.record_consent(
                    cmd, repo=repo, outbox=uow, clock=clock, consent_id=consent_id, details=details
                )
            except ConsentRuleViolation as exc:
                raise HTTPException(422, detail=str(exc)) from None
            except ValidationError as exc:
                raise HTTPException(422, detail=describe_error(exc)) from None
        response.headers["Location"] = f"/consents/{record.id}"
        return ConsentOut.of(record, clock.now())

    @router.get(
        "/consents/{consent_id}",
        response_model=ConsentOut,
        tags=["consents"],
        summary="Read one consent",
        responses={403: {"description": "No relation to the consent, or excluded by it"}},
        openapi_extra=RULES["read"],
    )
    async def get_consent(consent_id: UUID, request: Request) -> ConsentOut:
        record = await _readable(request, consent_id, f"Consent/{consent_id}")
        if record is None:
            raise HTTPException(404, detail="no such consent")
        return ConsentOut.of(record, clock.now())

    async def _change(consent_id: UUID, change: Any, request: Request) -> ConsentOut:
        async with runtime.unit_of_work() as uow:
            repo = SqlConsentRepository(uow.conn)
            record = await repo.get(consent_id)
            if record is None:
                raise HTTPException(404, detail="no such consent")
            check_if_match(request, record.version)  # If-Match: W/"<version>" → 412 when it moved on
            try:
                record, _changed = await change(repo, uow, record)
            except handlers.ConsentNotFound:
                raise HTTPException(404, detail="no such consent") from None
            except ConsentStateConflict as exc:
                raise HTTPException(409, detail=str(exc)) from None
            except ConsentRuleViolation as exc:
                raise HTTPException(422, detail=str(exc)) from None
        return ConsentOut.of(record, clock.now())

    @router.post(
        "/consents/{consent_id}/withdraw",
        response_model=ConsentOut,
        tags=["consents"],
        summary="Withdraw a consent (återkallelse): immediate, irreversible, kept as history",
        responses={
            403: {"description": "Not the person, a guardian, the recorder, the owner or a participant"},
            404: {"description": "No such consent"},
            409: {"description": "Cancelled or declined: nothing to withdraw"},
        },
        openapi_extra=RULES["withdraw"],
    )
    async def withdraw(consent_id: UUID, body: WithdrawIn, request: Request) -> ConsentOut:
        """A second withdrawal answers 200 with the unchanged record. A new consent is a new record.
        The person (or a guardian) may withdraw with their own e-ID: recorded as by ``person`` /
        ``guardian``."""
        caller = caller_of(request)
        now = clock.now()

        async def change(repo: SqlConsentRepository, uow: Any, record: ConsentRecord) -> Any:
            case_request = await _case_request(repo, record.case_id)
            guardians = (
                access.guardians_of(await repo.for_patient(record.patient_identifier), now)
                if caller.is_person
                else frozenset()
            )
            by, requested_by = access.may_withdraw(
                caller, record, case_request, guardians, body.recorded_by_hsa_id, now
            )
            return await handlers.withdraw_consent(
                consent_id, by_hsa_id=by, requested_by=requested_by, at=body.withdrawn_at, repo=repo,
                outbox=uow, clock=clock,
            )  # fmt: skip

        return await _change(consent_id, change, request)

    @router.post(
        "/consents/{consent_id}/cancel",
        response_model=ConsentOut,
        tags=["consents"],
        summary="Cancel a wrongly registered consent (makulering); audited",
        responses={
            403: {"description": "Not the recorder or the case's owner"},
            404: {"description": "No such consent"},
        },
        openapi_extra=RULES["cancel"],
    )
    async def cancel(consent_id: UUID, body: CancelIn, request: Request) -> ConsentOut:
        caller = caller_of(request)

        async def change(repo: SqlConsentRepository, uow: Any, record: ConsentRecord) -> Any:
            case_request = await _case_request(repo, record.case_id)
            by = access.may_cancel(caller, record, case_request, body.cancelled_by_hsa_id)
            return await handlers.cancel_consent(
                consent_id, by_hsa_id=by, reason=body.reason, repo=repo, outbox=uow, clock=clock
            )

        return await _change(consent_id, change, request)

    @router.get(
        "/consents",
        response_model=list[ConsentOut],
        tags=["consents"],
        summary="A person's consents, filtered to those the caller may read",
        openapi_extra=RULES["search"],
    )
    async def list_consents(
        request: Request,
        patient: Annotated[str | None, Query(description=_PATIENT_DOC)] = None,
    ) -> list[ConsentOut]:
        caller = caller_of(request)
        pid = _asked_patient(caller, patient)
        now = clock.now()
        seen = await consents_seen_by(caller, pid, now)
        return [ConsentOut.of(r, now) for r in seen]

    @router.get(
        "/consent-requests",
        response_model=list[ConsentRequestOut],
        tags=["consents"],
        summary="Cases waiting for the person's consent (the owner's and participants' own)",
        openapi_extra=RULES["requests"],
    )
    async def pending_requests(request: Request) -> list[ConsentRequestOut]:
        """Cases waiting for the person's consent (for the staff who collect it): the caller's own
        cases (owner or participant); an operator sees all. Each person listed is audited."""
        caller = caller_of(request)
        now = clock.now()
        async with runtime.engine.connect() as conn:
            items = await SqlConsentRepository(conn).pending_requests()
        seen = access.visible_requests(caller, items)
        by_person: dict[str, str] = {}
        for r, basis in seen:
            by_person.setdefault(r.patient_identifier, basis)
        await audited(
            *(
                access.read_entry(
                    caller,
                    patient=pnr,
                    action="search",
                    verdict=access.Verdict(True, basis),
                    what="consent-requests?status=pending",
                    now=now,
                )
                for pnr, basis in by_person.items()
            )
        )
        return [
            ConsentRequestOut(
                case_id=r.case_id,
                patient=mask(r.patient_identifier),
                is_child=r.is_child,
                purposes=list(r.purposes),
                proposed_recipients=list(r.proposed_recipients),
                requested_at=r.requested_at,
                status=r.status,
            )
            for r, _basis in seen
        ]

    # ---- decisions ------------------------------------------------------------------------------
    @router.post(
        "/decisions",
        response_model=ConsentDecisionReply,
        tags=["decisions"],
        summary="May an organisation receive a category of information about a person for a purpose?",
        responses={403: {"description": "Not an operator, nor the owner or a participant of case_id"}},
        openapi_extra=RULES["decide"],
    )
    async def post_decision(
        body: DecisionIn, request: Request, x_correlation_id: Annotated[str | None, Header()] = None
    ) -> ConsentDecisionReply:
        """Permit or deny with a reason code, the basis (consent or LUS logistics) and the consent
        relied on. Every answer is recorded as an AuditEvent (its id is in the answer)."""
        caller = caller_of(request)
        case_request = None
        if body.case_id is not None and not caller.operator:
            async with runtime.engine.connect() as conn:
                case_request = await SqlConsentRepository(conn).get_request(body.case_id)
        access.may_decide(caller, body.case_id, case_request)
        at = body.at or clock.now()
        query = DecisionQuery(
            patient_identifier=body.patient_identifier,
            recipient=body.recipient_hsa_id,
            category=body.category,
            purpose=body.purpose,
            at=at,
            case_id=body.case_id,
        )
        result, audit_id = await handlers.decide_and_audit(
            query,
            records_of=records_of,
            clock=clock,
            channel="http",
            requested_by=body.requested_by or caller.hsa_id,
            correlation_id=x_correlation_id,
            audit=audit_writer.write,
        )
        return reply_of(result, audit_id, at)

    # ---- audit ----------------------------------------------------------------------------------
    async def _audit_search(
        caller: Caller, pid: str, *, limit: int, outcome: str | None, what: str
    ) -> list[AuditEntry]:
        now = clock.now()
        async with runtime.engine.connect() as conn:
            repo = SqlConsentRepository(conn)
            records = await repo.for_patient(pid)
            requests = await repo.requests_for_patient(pid)
            scope = access.audit_scope(caller, pid, records, requests, now)
            entries = (
                await repo.audit_for_patient(pid, limit=limit, outcome=outcome, visible_to=scope.visible_to)
                if scope.verdict.permit
                else []
            )
        verdict = scope.verdict
        if scope.visible_to is not None and not entries:
            verdict = access.Verdict(False)
        await audited(
            access.read_entry(caller, patient=pid, action="search", verdict=verdict, what=what, now=now)
        )
        return entries

    @router.get(
        "/audit",
        response_model=list[AuditOut],
        tags=["audit"],
        summary="Who received, read — or was refused — what about the person, newest first",
        openapi_extra=RULES["audit"],
    )
    async def audit(
        request: Request,
        patient: Annotated[str | None, Query(description=_PATIENT_DOC)] = None,
        outcome: Annotated[Literal["permit", "deny", "done"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        """The person, a guardian (the child's) and an operator see the whole trail; an organisation
        only the entries it received or read and those of the cases it owns — filtered before
        ``limit``, so a page is never short because of it."""
        caller = caller_of(request)
        try:
            pid = _asked_patient(caller, patient, token=True)
        except ValidationError as exc:
            raise HTTPException(422, detail=describe_error(exc)) from None
        entries = await _audit_search(caller, pid, limit=limit, outcome=outcome, what="AuditEvent?patient")
        return [AuditOut.of(e) for e in entries]

    # ---- FHIR -----------------------------------------------------------------------------------
    def _unsupported(asked: str) -> Response:
        return outcome_response(
            406, f"FHIR version '{asked[:20]}' not supported: 4.0 (default) or 5.0", "not-supported"
        )

    @router.get(
        "/fhir/Consent/{consent_id}",
        tags=["fhir"],
        summary="Read a consent as FHIR Consent (R4; R5 with ?_fhirVersion=5.0 or Accept fhirVersion=5.0)",
        openapi_extra=RULES["read"],
    )
    async def fhir_consent(consent_id: str, request: Request) -> Response:
        try:
            version = fhir_version(request)
        except UnsupportedFhirVersion as exc:
            return _unsupported(str(exc))
        try:
            cid = UUID(consent_id)
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        record = await _readable(request, cid, f"Consent/{cid}")
        if record is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        return fhir_response(
            consent_resource(record, version, clock.now()), version, {"ETag": f'W/"{record.version}"'}
        )

    async def _versions(cid: UUID) -> list[tuple[int, str, datetime, ConsentRecord]] | None:
        async with runtime.engine.connect() as conn:
            repo = SqlConsentRepository(conn)
            versions = await repo.history(cid)
            if not versions:  # recorded before history was kept: its current state is version 1
                record = await repo.get(cid)
                if record is None:
                    return None
                versions = [(record.version, "created", record.recorded_at, record)]
        return versions

    @router.get("/fhir/metadata", tags=["fhir"], summary="CapabilityStatement (generated from the routes)")
    async def fhir_metadata(request: Request) -> Response:
        return fhir_json(generated_statement(
            request.app, name="consent", base_url=base, at=clock.now(), versions=VERSIONS, security=security,
        ))  # fmt: skip

    @router.get(
        "/fhir/Consent",
        tags=["fhir"],
        summary="Search a person's consents (each filtered by the read rule before paging): patient, status",
        openapi_extra={**RULES["search"], **fhir_route(search=CONSENT_SEARCH)},
    )
    async def fhir_consent_search(request: Request) -> Response:
        s = parse_search(request, CONSENT_SEARCH)
        version = fhir_version(request)
        caller = caller_of(request)
        try:
            pid = _asked_patient(caller, s.get("patient"), token=True)
        except ValidationError:
            return outcome_response(400, "patient: not a valid personnummer or samordningsnummer", "invalid")
        except HTTPException as exc:
            return outcome_response(400, str(exc.detail), "required")
        now = clock.now()
        seen = await consents_seen_by(caller, pid, now)
        statuses = set((s.get("status") or "").split(",")) - {""}
        resources = [(r, consent_resource(r, version, now)) for r in seen]
        matches = [
            (r, res) for r, res in resources
            if (not statuses or res["status"] in statuses)
            and (s.snapshot is None or r.recorded_at <= s.snapshot)
        ]  # fmt: skip
        matches.sort(key=lambda m: (m[0].recorded_at, str(m[0].id)), reverse=True)
        snapshot = frozen(s, (r.recorded_at for r, _ in matches))
        page = [res for _, res in matches[s.offset : s.offset + s.count]]
        bundle = searchset(base, "Consent", s, page, len(matches), snapshot)
        return fhir_response(validated_bundle(bundle, version), version)

    @router.get(
        "/fhir/Consent/{consent_id}/_history",
        tags=["fhir"],
        summary="Every version of a Consent",
        openapi_extra=RULES["read"],
    )
    async def fhir_consent_history(consent_id: str, request: Request) -> Response:
        try:
            version = fhir_version(request)
            cid = UUID(consent_id)
        except UnsupportedFhirVersion as exc:
            return _unsupported(str(exc))
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        if await _readable(request, cid, f"Consent/{cid}/_history") is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        versions = await _versions(cid)
        if versions is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        return fhir_response(consent_history(versions, version, base), version)

    @router.get(
        "/fhir/Consent/{consent_id}/_history/{vid}",
        tags=["fhir"],
        summary="One version of a Consent",
        openapi_extra=RULES["read"],
    )
    async def fhir_consent_vread(consent_id: str, vid: str, request: Request) -> Response:
        try:
            version = fhir_version(request)
            cid = UUID(consent_id)
        except UnsupportedFhirVersion as exc:
            return _unsupported(str(exc))
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        if await _readable(request, cid, f"Consent/{cid}/_history/{vid[:12]}") is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        versions = await _versions(cid) or []
        match = [v for v in versions if str(v[0]) == vid]
        if not match:
            return outcome_response(404, "no such version of that Consent", "not-found")
        resource = consent_resource(match[0][3], version)
        resource["meta"]["versionId"] = vid
        return fhir_response(resource, version, {"ETag": f'W/"{vid}"'})

    @router.get(
        "/fhir/AuditEvent",
        tags=["fhir"],
        summary="Search the audit log of a person, newest first, paged (_count, next)",
        openapi_extra={**RULES["audit"], **fhir_route(search=AUDIT_SEARCH)},
    )
    async def fhir_audit_search(request: Request) -> Response:
        r4_only(request)
        s = parse_search(request, AUDIT_SEARCH, default_count=100, max_count=1000)
        caller = caller_of(request)
        try:
            pid = _asked_patient(caller, s.get("patient"), token=True)
        except ValidationError:
            return outcome_response(400, "patient: not a valid personnummer or samordningsnummer", "invalid")
        except HTTPException as exc:
            return outcome_response(400, str(exc.detail), "required")
        now = clock.now()
        entries: list[AuditEntry] = []
        total, newest = 0, None
        async with runtime.engine.connect() as conn:
            repo = SqlConsentRepository(conn)
            records = await repo.for_patient(pid)
            requests = await repo.requests_for_patient(pid)
            scope = access.audit_scope(caller, pid, records, requests, now)
            if scope.verdict.permit:  # filtered in the query, before counting and paging
                total, newest = await repo.count_audit_for_patient(
                    pid, visible_to=scope.visible_to, until=s.snapshot
                )
                until = s.snapshot or newest
                after = _audit_cursor(s.cursor)
                if s.count:
                    entries = await repo.audit_for_patient(
                        pid, limit=s.count, offset=0 if after else s.offset, visible_to=scope.visible_to,
                        until=until, after=after,
                    )  # fmt: skip
        verdict = scope.verdict
        if scope.visible_to is not None and not total:
            verdict = access.Verdict(False)
        await audited(
            access.read_entry(
                caller, patient=pid, action="search", verdict=verdict, what="AuditEvent?patient", now=now
            )
        )
        snapshot = s.snapshot or newest
        cursor = f"{entries[-1].recorded_at.isoformat()}~{entries[-1].id}" if entries else None
        bundle = searchset(base, "AuditEvent", s, audit_events(entries), total, snapshot, cursor)
        return fhir_response(validated_bundle(bundle), "4.0")

    @router.get(
        "/fhir/AuditEvent/{audit_id}",
        tags=["fhir"],
        summary="Read one AuditEvent (R4)",
        openapi_extra=RULES["audit-read"],
    )
    async def fhir_audit_read(audit_id: str, request: Request) -> Response:
        r4_only(request)
        caller = caller_of(request)
        try:
            aid = UUID(audit_id)
        except ValueError:
            return outcome_response(404, "no AuditEvent with that id", "not-found")
        now = clock.now()
        async with runtime.engine.connect() as conn:
            repo = SqlConsentRepository(conn)
            entry = await repo.get_audit(aid)
            if entry is None:
                return outcome_response(404, "no AuditEvent with that id", "not-found")
            records = await repo.for_patient(entry.patient_identifier)
            requests = await repo.requests_for_patient(entry.patient_identifier)
            owned = caller.hsa_id is not None and await repo.audit_entry_visible_to(aid, caller.hsa_id)
        verdict = access.read_audit_entry(caller, entry, owned, records, requests, now)
        await audited(
            access.read_entry(
                caller, patient=entry.patient_identifier, action="read", verdict=verdict,
                what=f"AuditEvent/{aid}", now=now, case_id=entry.case_id,
            )
        )  # fmt: skip
        if not verdict.permit:
            raise Denied(403, verdict.detail)
        return fhir_response(audit_event_resource(entry), "4.0")

    return router


def _audit_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """``<recorded_at>~<id>`` of the last entry of the page before (the next link's ``_cursor``)."""
    if not cursor:
        return None
    at, _, last = cursor.partition("~")
    try:
        when, ident = datetime.fromisoformat(at), str(UUID(last))
    except ValueError:
        raise FhirError(400, "_cursor: use the next link as given") from None
    if when.tzinfo is None:
        raise FhirError(400, "_cursor: use the next link as given")
    return when, ident


def r4_only(request: Request) -> None:
    """AuditEvent is served as R4 only: asked for R5, 406 rather than R4 under another name."""
    if fhir_version(request) != "4.0":
        raise FhirError(406, "AuditEvent is served in FHIR 4.0 only", "not-supported")


def _asked_patient(caller: Caller, patient: str | None, *, token: bool = False) -> str:
    """The person asked about: ``patient`` (validated; a FHIR token ``system|value`` where ``token``),
    or the calling person's own. An organisation must name the patient."""
    if patient is None:
        if caller.person_id is not None:
            return caller.person_id
        raise HTTPException(422, detail="patient: required (the personnummer the search is about)")
    if token:
        return _patient_param(patient)
    try:
        return PersonIdModel(v=patient).v
    except ValidationError as exc:
        raise HTTPException(422, detail=describe_error(exc)) from None
