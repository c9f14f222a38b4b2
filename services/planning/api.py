"""HTTP API of planning: the hospital stays, FHIR messages in (``$process-message``), and the
coordinators' overview of cases.

The routes live by use case, each module with a module-level ``router`` whose route functions take
their shared dependencies (:class:`~services.planning.api_deps.PlanningApi`, on
``app.state.planning_api``) as a FastAPI dependency:

- :mod:`services.planning.api` — stays, ``$process-message``, the cases and the overview (read)
- :mod:`services.planning.api_cases` — the commands over a SIP's lifecycle
- :mod:`services.planning.api_fhir` — the FHIR API (base ``/fhir``): CarePlan, Provenance and the
  CapabilityStatement
- :mod:`services.planning.api_deps` — what the routes share
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.planning import access
from services.planning.access import in_lists, may_read_plan
from services.planning.api_deps import Ctx, PlanningApi
from services.planning.domain import INVITATION_CLOCK_STATES, SipCase
from services.planning.plan import Approval, Meeting, MeetingPreferences, PlanContent
from services.planning.stays import Stay
from shared.auth import Caller, CallerDep, current_caller
from shared.fhir import fhir_json, outcome_response
from shared.identifiers import mask

log = logging.getLogger("sip.planning.api")


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
    ready_for_discharge_at: datetime | None
    invitation_due_at: datetime | None
    invited_at: datetime | None
    invitation_deadline_met: bool | None
    next_deadline: str | None = Field(description="What is due next, e.g. 'invitation'")
    consent_id: UUID | None
    suspended_from: str | None = Field(
        default=None, description="Suspended (ready-for-discharge revoked): the state it resumes to"
    )
    closed_reason: str | None = Field(
        default=None, description="Why a refused, cancelled or closed case ended"
    )
    origin: str = Field(description="discharge | proposal")
    proposed_by: str | None = None
    preferences: MeetingPreferences | None = None
    meeting: Meeting | None = None
    approval: Approval | None = Field(default=None, description="The person's approval of the plan in force")
    follow_up_date: date | None = None

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
            next_deadline=next_deadline(c),
            consent_id=c.consent_id,
            suspended_from=c.suspended_from,
            closed_reason=c.closed_reason,
            origin=c.origin,
            proposed_by=c.proposed_by,
            preferences=c.preferences,
            meeting=c.meeting,
            approval=c.approval,
            follow_up_date=c.follow_up_date,
        )


def next_deadline(c: SipCase) -> str | None:
    if c.state in INVITATION_CLOCK_STATES and c.invitation_due_at is not None:
        return "invitation"
    if c.state in ("invited",):
        return "meeting"
    if c.state in ("established", "follow_up_due"):
        return "follow-up"
    if c.state == "plan_drafted":
        return "approval"
    return None


class CaseDetail(CaseOut):
    plan: PlanContent | None = Field(
        default=None, description="The latest plan content (a draft until approved)"
    )
    plan_in_force: PlanContent | None = Field(default=None, description="The plan the person approved")

    @classmethod
    def detail(cls, c: SipCase) -> CaseDetail:
        return cls(**CaseOut.of(c).model_dump(), plan=c.plan, plan_in_force=c.plan_in_force)


class DeadlineOut(BaseModel):
    kind: str = Field(description="admission-notice | invitation | meeting | follow-up | consent-expiry")
    cycle: int
    status: str = Field(description="pending | met | breached | cancelled")
    started_at: datetime
    due_at: datetime
    owner_hsa_id: str
    met_at: datetime | None
    breached_at: datetime | None
    escalated_to: str | None


class OverviewRow(BaseModel):
    case_id: UUID
    case_reference: str
    state: str
    owner_hsa_id: str = Field(description="Who owns the next deadline")
    next_deadline: str | None
    due_at: datetime | None
    breached_unmet: int = Field(description="Escalated deadlines of the case not met yet")


class StayOut(BaseModel):
    hospital_id: str
    stay_id: str
    patient: str = Field(description="Masked identifier (birth year only)")
    kommun_code: str | None
    primary_care_unit: str | None
    admitted_at: datetime | None
    expected_discharge_at: datetime | None
    ready_for_discharge_at: datetime | None
    discharged_at: datetime | None
    on_leave: bool
    deceased: bool
    cancelled: list[str] = Field(description="Kinds of event the hospital has cancelled for this stay")
    case_id: str | None
    note: str | None = Field(description="Why no SIP case was opened, when none was")

    @classmethod
    def of(cls, s: Stay) -> StayOut:
        return cls(
            hospital_id=s.hospital_id,
            stay_id=s.stay_id,
            patient=mask(s.patient_value) if s.swedish else "***",
            kommun_code=s.kommun_code,
            primary_care_unit=s.primary_care_unit,
            admitted_at=s.admitted_at,
            expected_discharge_at=s.expected_discharge_at,
            ready_for_discharge_at=s.ready_at,
            discharged_at=s.discharged_at,
            on_leave=s.on_leave,
            deceased=s.deceased_at is not None,
            cancelled=sorted(s.cancelled),
            case_id=s.case_id,
            note=s.note,
        )


router = APIRouter()


async def read_case(ctx: PlanningApi, caller: Caller | None, case_id: UUID, what: str) -> SipCase:
    """The case when the caller may read it (recorded in the person's audit trail); else 403/404/503."""
    async with ctx.runtime.engine.connect() as conn:
        case = await ctx.cases(conn).get_case(case_id)
    if case is None:
        raise HTTPException(404, detail="no such SIP case")
    decision = await may_read_plan(caller, case, ctx.gate())
    if caller is not None:
        await access.record(ctx.runtime, [access.access_recorded(
            caller, what=what, basis=decision.basis, allowed=decision.allowed, at=ctx.clock.now(), case=case,
        )])  # fmt: skip
    if not decision.allowed:
        raise HTTPException(decision.status, detail=decision.reason)
    return case


@router.get(
    "/stays", response_model=list[StayOut], tags=["intake"], summary="Hospital stays",
    openapi_extra=access.LIST_STAYS,
)  # fmt: skip
async def list_stays(
    caller: CallerDep, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[StayOut]:
    may, hospital = access.stays_filter(caller)
    if not may:
        return []
    async with ctx.runtime.engine.connect() as conn:
        items = await ctx.cases(conn).list_stays(limit, hospital_id=hospital)
    return [StayOut.of(s) for s in items if access.sees_stay(caller, s)]


@router.post(
    "/fhir/$process-message",
    tags=["fhir", "intake"],
    summary="Receive a FHIR R4 message Bundle (MedCom HospitalNotification, Da Vinci notifications)",
    description="Answers 200 with a response message Bundle once the message is durably stored; "
    "400/422 with an OperationOutcome saying why when it is refused; a resent message "
    "(same MessageHeader.id from the same sender) gets the same answer and has no second effect. "
    "503 when it could not be stored: send it again.",
    responses={
        200: {"description": "Accepted"},
        400: {"description": "Refused (OperationOutcome)"},
        422: {"description": "Refused (OperationOutcome)"},
        503: {"description": "Not stored; resend"},
    },
    openapi_extra=access.PROCESS_MESSAGE,
)
async def process_message(request: Request, ctx: Ctx) -> JSONResponse:
    if not access.may_send_hospital_messages(current_caller(request), ctx.directory):
        return outcome_response(
            403, "only a hospital (directory kind hospital) sends hospital messages", "forbidden"
        )
    runtime = ctx.runtime
    body = await request.body()
    try:
        status, answer = await ctx.intake.handle_fhir(body)
    except Exception as exc:
        # a database outage: logged once per outage (shared.dependencies), not per message
        if runtime.dependencies.report(exc) is None:
            log.exception("FHIR message could not be stored")
        refused = outcome_response(503, "the message could not be stored; send it again", "transient")
        refused.headers["Retry-After"] = str(max(1, round(runtime.dependencies.backoff("database"))))
        return refused
    runtime.dependencies.up("database")
    runtime.relay.wake()
    return fhir_json(answer, status)


@router.get(
    "/cases", response_model=list[CaseOut], tags=["cases"], summary="Open SIP cases by deadline",
    openapi_extra=access.LIST_CASES,
)  # fmt: skip
async def list_cases(
    caller: CallerDep,
    ctx: Ctx,
    all: Annotated[bool, Query(description="Include declined and closed cases")] = False,
) -> list[CaseOut]:
    """The cases the caller has a relation to (no plan content: read it per case)."""
    async with ctx.runtime.engine.connect() as conn:
        items = await ctx.cases(conn).open_cases(include_closed=all, related=access.list_filter(caller))
    return [CaseOut.of(c) for c in items if in_lists(caller, c)]


@router.get(
    "/overview", response_model=list[OverviewRow], tags=["cases"],
    summary="Coordinators' overview: every open case with its next deadline and who owns it",
    openapi_extra=access.LIST_CASES,
)  # fmt: skip
async def overview(caller: CallerDep, ctx: Ctx) -> list[OverviewRow]:
    """The open cases the caller may list (an organisation: those it owns, takes part in or is the
    hospital of; the operator: all), the soonest next deadline first and cases without one last — at
    most 500, chosen among the caller's own cases."""
    async with ctx.runtime.engine.connect() as conn:
        related = access.list_filter(caller)
        if related is None:  # the operator (or no authentication): every open case
            rows = await ctx.deadlines(conn).next_deadlines()
        else:  # the caller's own cases, chosen before the limit (not their share of the region's first)
            mine = {c.id for c in await ctx.cases(conn).open_cases(related=related) if in_lists(caller, c)}
            rows = await ctx.deadlines(conn).next_deadlines(related=related, keep=mine)
    return [
        OverviewRow(
            case_id=r.case_id,
            case_reference=r.case_reference,
            state=r.case_state,
            owner_hsa_id=r.owner_hsa_id,
            next_deadline=r.kind,
            due_at=r.due_at,
            breached_unmet=r.breached_unmet,
        )
        for r in rows
    ]


@router.get(
    "/cases/{case_id}/deadlines", response_model=list[DeadlineOut], tags=["cases"],
    openapi_extra=access.READ_CASE,
)  # fmt: skip
async def case_deadlines(case_id: UUID, caller: CallerDep, ctx: Ctx) -> list[DeadlineOut]:
    await read_case(ctx, caller, case_id, f"SipCase/{case_id}/deadlines")
    async with ctx.runtime.engine.connect() as conn:
        rows = await ctx.deadlines(conn).history(case_id)
    return [DeadlineOut.model_validate(r, from_attributes=True) for r in rows]


@router.get("/cases/{case_id}", response_model=CaseDetail, tags=["cases"], openapi_extra=access.READ_CASE)
async def get_case(case_id: UUID, caller: CallerDep, ctx: Ctx) -> CaseDetail:
    """The case with its plan: the owning unit, those the person's consent covers, the person, the
    guardians named on a child's consent. Recorded in the person's audit trail."""
    return CaseDetail.detail(await read_case(ctx, caller, case_id, f"SipCase/{case_id}"))
