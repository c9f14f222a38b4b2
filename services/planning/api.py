"""HTTP API of planning: the coordinators' overview of cases, and the FHIR API (base ``/fhir``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.planning.adapters.fhir import capability_statement
from services.planning.adapters.store import SqlCaseRepository
from services.planning.domain import SipCase
from services.planning.settings import PlanningSettings
from shared.clock import Clock
from shared.fhir import fhir_json, outcome_response
from shared.identifiers import mask
from shared.runtime import ServiceRuntime


class ParticipantOut(BaseModel):
    hsa_id: str
    name: str
    kind: str


class CaseOut(BaseModel):
    id: UUID
    reference: str
    state: str
    patient: str = Field(description="Masked identifier (birth year only)")
    is_child: bool
    kommun_code: str
    hospital_hsa_id: str
    episode_id: str
    owner_hsa_id: str = Field(description="Owns the next deadline: the primary-care unit (fast vårdkontakt)")
    participants: list[ParticipantOut]
    opened_at: datetime
    ready_for_discharge_at: datetime
    invitation_due_at: datetime
    invited_at: datetime | None
    invitation_deadline_met: bool | None
    next_deadline: str | None = Field(description="What is due next, e.g. 'invitation'")
    consent_id: UUID | None

    @classmethod
    def of(cls, c: SipCase) -> CaseOut:
        return cls(
            id=c.id,
            reference=c.reference,
            state=c.state,
            patient=mask(c.patient_identifier),
            is_child=c.is_child,
            kommun_code=c.kommun_code,
            hospital_hsa_id=c.hospital_hsa_id,
            episode_id=c.episode_id,
            owner_hsa_id=c.owner_hsa_id,
            participants=[ParticipantOut(**p.__dict__) for p in c.participants],
            opened_at=c.opened_at,
            ready_for_discharge_at=c.ready_for_discharge_at,
            invitation_due_at=c.invitation_due_at,
            invited_at=c.invited_at,
            invitation_deadline_met=c.invitation_deadline_met,
            next_deadline="invitation" if c.state in ("consent_pending", "invitation_requested") else None,
            consent_id=c.consent_id,
        )


def build_router(runtime: ServiceRuntime, settings: PlanningSettings, clock: Clock) -> APIRouter:
    router = APIRouter()

    @router.get("/cases", response_model=list[CaseOut], tags=["cases"], summary="Open SIP cases by deadline")
    async def list_cases(
        all: Annotated[bool, Query(description="Include declined and closed cases")] = False,
    ) -> list[CaseOut]:
        async with runtime.engine.connect() as conn:
            items = await SqlCaseRepository(conn).open_cases(include_closed=all)
        return [CaseOut.of(c) for c in items]

    @router.get("/cases/{case_id}", response_model=CaseOut, tags=["cases"])
    async def get_case(case_id: UUID) -> CaseOut:
        async with runtime.engine.connect() as conn:
            case = await SqlCaseRepository(conn).get_case(case_id)
        if case is None:
            raise HTTPException(404, detail="no such SIP case")
        return CaseOut.of(case)

    @router.get("/fhir/metadata", tags=["fhir"], summary="CapabilityStatement")
    async def metadata() -> JSONResponse:
        return fhir_json(capability_statement(settings.public_base_url, clock.now()))

    @router.get("/fhir/CarePlan/{plan_id}", tags=["fhir"], summary="Read the latest version of a plan")
    async def read_care_plan(plan_id: str) -> JSONResponse:
        try:
            case_id = UUID(plan_id)
        except ValueError:
            return outcome_response(404, f"no CarePlan with id {plan_id[:64]}", "not-found")
        async with runtime.engine.connect() as conn:
            plan: dict[str, Any] | None = await SqlCaseRepository(conn).latest_plan(case_id)
        if plan is None:
            return outcome_response(404, f"no CarePlan with id {case_id}", "not-found")
        return fhir_json(plan, headers={"ETag": f'W/"{plan["meta"]["versionId"]}"'})

    return router
