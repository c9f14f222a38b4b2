"""HTTP API of consent: record, withdraw and cancel consents; read them (plain JSON and FHIR Consent,
R4 by default, R5 on request, with history); decide "may X receive Y"; read the audit log."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid5

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from services.consent import handlers
from services.consent.adapters.fhir import (
    FhirVersion,
    audit_bundle,
    audit_event_resource,
    consent_history,
    consent_resource,
)
from services.consent.adapters.store import AuditWriter, SqlConsentRepository, records_reader
from services.consent.domain import (
    AuditEntry,
    CancelReason,
    ChildView,
    ConsentDetails,
    ConsentRecord,
    ConsentRuleViolation,
    ConsentStateConflict,
    Custody,
    GuardianStatement,
    Stance,
)
from services.consent.policy import DecisionQuery
from shared.clock import Clock
from shared.contracts import (
    ConsentDecisionReply,
    ConsentPurpose,
    HsaId,
    InformationCategory,
    PersonId,
    RecordConsent,
)
from shared.fhir import FHIR_JSON, outcome_response
from shared.identifiers import mask
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime

_IDEMPOTENCY_NS = UUID("6f6b0b7e-3c1e-4d7e-9a53-6a1f1c0e5a11")


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
    recorded_by_hsa_id: HsaId
    valid_until: AwareDatetime | None = None
    valid_from: AwareDatetime | None = Field(default=None, description="Start of validity; default: now")
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
    status_changed_by_hsa_id: str | None = None
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

    recorded_by_hsa_id: HsaId = Field(description="Who recorded the withdrawal")
    withdrawn_at: AwareDatetime | None = Field(
        default=None, description="When the person withdrew it, if earlier than now (never later)"
    )
    method: Literal["oral", "written"] = "oral"


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cancelled_by_hsa_id: HsaId = Field(description="Who cancels the wrongly registered consent")
    reason: CancelReason = Field(description="wrong-person | registration-error | duplicate | not-given")


class DecisionIn(BaseModel):
    """May ``recipient_hsa_id`` receive ``category`` about the person for ``purpose`` at ``at``?"""

    model_config = ConfigDict(extra="forbid")

    patient_identifier: PersonId
    recipient_hsa_id: HsaId
    category: InformationCategory
    purpose: ConsentPurpose
    at: AwareDatetime | None = Field(default=None, description="Default: now")
    case_id: UUID | None = None
    requested_by: str | None = Field(default=None, max_length=128, description="Asking system or unit")


class AuditOut(BaseModel):
    """One line of "who received (or was refused) what about me"."""

    id: UUID
    recorded_at: datetime
    action: str
    outcome: str
    reason: str
    basis: str
    recipient_hsa_id: str | None
    category: str | None
    purpose: str | None
    consent_id: UUID | None
    case_id: UUID | None
    decision_at: datetime | None
    requested_by: str | None
    channel: str

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


_VERSION_ALIASES = {"4.0": "4.0", "4.0.1": "4.0", "r4": "4.0", "5.0": "5.0", "5.0.0": "5.0", "r5": "5.0"}


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
    return version  # type: ignore[return-value]


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


def build_router(runtime: ServiceRuntime, clock: Clock, audit_writer: AuditWriter) -> APIRouter:
    router = APIRouter()
    records_of = records_reader(runtime.engine)

    @router.post(
        "/consents",
        status_code=201,
        response_model=ConsentOut,
        tags=["consents"],
        summary="Record a consent decision (granted or declined)",
        responses={422: {"description": "The consent breaks a rule; `detail` says which"}},
    )
    async def post_consent(
        body: ConsentIn,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> ConsentOut:
        consent_id = uuid5(_IDEMPOTENCY_NS, idempotency_key) if idempotency_key else None
        async with runtime.unit_of_work() as uow:
            repo = SqlConsentRepository(uow.conn)
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

    @router.get("/consents/{consent_id}", response_model=ConsentOut, tags=["consents"])
    async def get_consent(consent_id: UUID) -> ConsentOut:
        async with runtime.engine.connect() as conn:
            record = await SqlConsentRepository(conn).get(consent_id)
        if record is None:
            raise HTTPException(404, detail="no such consent")
        return ConsentOut.of(record, clock.now())

    async def _change(consent_id: UUID, change: Any) -> ConsentOut:
        async with runtime.unit_of_work() as uow:
            repo = SqlConsentRepository(uow.conn)
            try:
                record, _changed = await change(repo, uow)
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
            404: {"description": "No such consent"},
            409: {"description": "Cancelled or declined: nothing to withdraw"},
        },
    )
    async def withdraw(consent_id: UUID, body: WithdrawIn) -> ConsentOut:
        """A second withdrawal answers 200 with the unchanged record. A new consent is a new record."""
        return await _change(
            consent_id,
            lambda repo, uow: handlers.withdraw_consent(
                consent_id,
                by_hsa_id=body.recorded_by_hsa_id,
                at=body.withdrawn_at,
                repo=repo,
                outbox=uow,
                clock=clock,
            ),
        )

    @router.post(
        "/consents/{consent_id}/cancel",
        response_model=ConsentOut,
        tags=["consents"],
        summary="Cancel a wrongly registered consent (makulering); audited",
        responses={404: {"description": "No such consent"}},
    )
    async def cancel(consent_id: UUID, body: CancelIn) -> ConsentOut:
        return await _change(
            consent_id,
            lambda repo, uow: handlers.cancel_consent(
                consent_id,
                by_hsa_id=body.cancelled_by_hsa_id,
                reason=body.reason,
                repo=repo,
                outbox=uow,
                clock=clock,
            ),
        )

    @router.get("/consents", response_model=list[ConsentOut], tags=["consents"])
    async def list_consents(patient: Annotated[str, Query(description="personnummer")]) -> list[ConsentOut]:
        try:
            pid = PersonIdModel(v=patient).v
        except ValidationError as exc:
            raise HTTPException(422, detail=describe_error(exc)) from None
        async with runtime.engine.connect() as conn:
            records = await SqlConsentRepository(conn).for_patient(pid)
        now = clock.now()
        return [ConsentOut.of(r, now) for r in records]

    @router.get("/consent-requests", response_model=list[ConsentRequestOut], tags=["consents"])
    async def pending_requests() -> list[ConsentRequestOut]:
        """Cases waiting for the person's consent (for the staff who collect it)."""
        async with runtime.engine.connect() as conn:
            items = await SqlConsentRepository(conn).pending_requests()
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
            for r in items
        ]

    # ---- decisions ------------------------------------------------------------------------------
    @router.post(
        "/decisions",
        response_model=ConsentDecisionReply,
        tags=["decisions"],
        summary="May an organisation receive a category of information about a person for a purpose?",
    )
    async def post_decision(
        body: DecisionIn, x_correlation_id: Annotated[str | None, Header()] = None
    ) -> ConsentDecisionReply:
        """Permit or deny with a reason code, the basis (consent or LUS logistics) and the consent
        relied on. Every answer is recorded as an AuditEvent (its id is in the answer)."""
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
            requested_by=body.requested_by,
            correlation_id=x_correlation_id,
            audit=audit_writer.write,
        )
        return reply_of(result, audit_id, at)

    # ---- audit ----------------------------------------------------------------------------------
    @router.get("/audit", response_model=list[AuditOut], tags=["audit"])
    async def audit(
        patient: Annotated[str, Query(description="personnummer")],
        outcome: Annotated[Literal["permit", "deny", "done"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        """Who received — or was refused — what about the person, newest first."""
        try:
            pid = _patient_param(patient)
        except ValidationError as exc:
            raise HTTPException(422, detail=describe_error(exc)) from None
        async with runtime.engine.connect() as conn:
            entries = await SqlConsentRepository(conn).audit_for_patient(pid, limit=limit, outcome=outcome)
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
        async with runtime.engine.connect() as conn:
            record = await SqlConsentRepository(conn).get(cid)
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

    @router.get("/fhir/Consent/{consent_id}/_history", tags=["fhir"], summary="Every version of a Consent")
    async def fhir_consent_history(consent_id: str, request: Request) -> Response:
        try:
            version = fhir_version(request)
            cid = UUID(consent_id)
        except UnsupportedFhirVersion as exc:
            return _unsupported(str(exc))
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        versions = await _versions(cid)
        if versions is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        return fhir_response(consent_history(versions, version), version)

    @router.get(
        "/fhir/Consent/{consent_id}/_history/{vid}", tags=["fhir"], summary="One version of a Consent"
    )
    async def fhir_consent_vread(consent_id: str, vid: str, request: Request) -> Response:
        try:
            version = fhir_version(request)
            cid = UUID(consent_id)
        except UnsupportedFhirVersion as exc:
            return _unsupported(str(exc))
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        versions = await _versions(cid) or []
        match = [v for v in versions if str(v[0]) == vid]
        if not match:
            return outcome_response(404, "no such version of that Consent", "not-found")
        return fhir_response(consent_resource(match[0][3], version), version, {"ETag": f'W/"{vid}"'})

    @router.get(
        "/fhir/AuditEvent",
        tags=["fhir"],
        summary="Search the audit log of a person: ?patient=<personnummer> (or <system>|<value>)",
    )
    async def fhir_audit_search(
        request: Request,
        patient: Annotated[str, Query(description="personnummer, or <system>|<value>")],
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 100,
    ) -> Response:
        try:
            pid = _patient_param(patient)
        except ValidationError:
            return outcome_response(400, "patient: not a valid personnummer or samordningsnummer", "invalid")
        async with runtime.engine.connect() as conn:
            entries = await SqlConsentRepository(conn).audit_for_patient(pid, limit=count)
        return fhir_response(audit_bundle(entries, str(request.url)), "4.0")

    @router.get("/fhir/AuditEvent/{audit_id}", tags=["fhir"], summary="Read one AuditEvent (R4)")
    async def fhir_audit_read(audit_id: str) -> Response:
        try:
            aid = UUID(audit_id)
        except ValueError:
            return outcome_response(404, "no AuditEvent with that id", "not-found")
        async with runtime.engine.connect() as conn:
            entry = await SqlConsentRepository(conn).get_audit(aid)
        if entry is None:
            return outcome_response(404, "no AuditEvent with that id", "not-found")
        return fhir_response(audit_event_resource(entry), "4.0")

    return router
