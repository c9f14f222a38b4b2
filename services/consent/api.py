"""HTTP API of consent: record a consent, read it (plain JSON and FHIR R4 Consent), list requests."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID, uuid5

from fastapi import APIRouter, Header, HTTPException, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from services.consent import handlers
from services.consent.adapters.fhir import consent_resource
from services.consent.adapters.store import SqlConsentRepository
from services.consent.domain import ConsentRecord, ConsentRuleViolation
from shared.clock import Clock
from shared.contracts import ConsentPurpose, HsaId, PersonId, RecordConsent
from shared.fhir import fhir_json, outcome_response
from shared.identifiers import mask
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime

_IDEMPOTENCY_NS = UUID("6f6b0b7e-3c1e-4d7e-9a53-6a1f1c0e5a11")


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

    @classmethod
    def of(cls, r: ConsentRecord) -> ConsentOut:
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
        )


class ConsentRequestOut(BaseModel):
    case_id: UUID
    patient: str = Field(description="Masked identifier")
    is_child: bool
    purposes: list[str]
    proposed_recipients: list[str]
    requested_at: datetime
    status: str


def build_router(runtime: ServiceRuntime, clock: Clock) -> APIRouter:
    router = APIRouter()

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
                return ConsentOut.of(existing)
            try:
                cmd = RecordConsent(**body.model_dump())
                record = await handlers.record_consent(
                    cmd, repo=repo, outbox=uow, clock=clock, consent_id=consent_id
                )
            except ConsentRuleViolation as exc:
                raise HTTPException(422, detail=str(exc)) from None
            except ValidationError as exc:
                raise HTTPException(422, detail=describe_error(exc)) from None
        response.headers["Location"] = f"/consents/{record.id}"
        return ConsentOut.of(record)

    @router.get("/consents/{consent_id}", response_model=ConsentOut, tags=["consents"])
    async def get_consent(consent_id: UUID) -> ConsentOut:
        async with runtime.engine.connect() as conn:
            record = await SqlConsentRepository(conn).get(consent_id)
        if record is None:
            raise HTTPException(404, detail="no such consent")
        return ConsentOut.of(record)

    @router.get("/consents", response_model=list[ConsentOut], tags=["consents"])
    async def list_consents(patient: Annotated[str, Query(description="personnummer")]) -> list[ConsentOut]:
        try:
            pid = PersonIdModel(v=patient).v
        except ValidationError as exc:
            raise HTTPException(422, detail=describe_error(exc)) from None
        async with runtime.engine.connect() as conn:
            records = await SqlConsentRepository(conn).for_patient(pid)
        return [ConsentOut.of(r) for r in records]

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

    @router.get("/fhir/Consent/{consent_id}", tags=["fhir"], summary="Read a consent as FHIR R4 Consent")
    async def fhir_consent(consent_id: str) -> Response:
        try:
            cid = UUID(consent_id)
        except ValueError:
            return outcome_response(404, "no Consent with that id", "not-found")
        async with runtime.engine.connect() as conn:
            record = await SqlConsentRepository(conn).get(cid)
        if record is None:
            return outcome_response(404, "no Consent with that id", "not-found")
        return fhir_json(consent_resource(record))

    return router


class PersonIdModel(BaseModel):
    v: PersonId
