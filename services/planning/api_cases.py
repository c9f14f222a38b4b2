"""HTTP commands over a SIP's lifecycle, for coordinators' systems.

Every command names the acting organisation in ``X-Sip-Organisation`` (its HSA-id); it is recorded as
the agent of the change (Provenance). A step the lifecycle does not allow answers **409** with the
current state and the refused step — and what is missing when the step only comes too early (invite
before the person's consent: "… in state consent_pending … the person's consent is missing"); a body
that breaks a rule answers **422** naming the field (a reason of only blanks says nothing: 422).

The routes are module-level on ``router``; runtime, clock, directory and deadline policy come as the
FastAPI dependency ``ctx: Ctx`` (:class:`~services.planning.api_deps.PlanningApi`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.planning import access, lifecycle
from services.planning.access import is_member
from services.planning.api import CaseDetail
from services.planning.api_deps import Ctx, PlanningApi
from services.planning.domain import InvalidTransition, MissingReason, SipCase
from services.planning.plan import FollowUp, Meeting, MeetingPreferences, PlanContent
from services.planning.ports import CaseStore
from shared.auth import ActingOrganisation, Caller, CallerDep
from shared.directory import UnknownRecipient
from shared.errors import PermanentError
from shared.fhir_rest import check_if_match
from shared.sql_unit_of_work import SqlUnitOfWork

Actor = ActingOrganisation  # from the bearer token (X-Sip-Organisation in a sandbox)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=200)] = Field(
        description="Recorded, trimmed: blanks say nothing and are refused (422); no health data"
    )


class ApprovalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(
        ge=1, le=2**31 - 1, description="The plan version the person approved (the latest draft)"
    )
    approved_by: Literal["person", "guardians", "legal-representative"]
    method: Literal["oral", "written", "digital"]


router = APIRouter(prefix="/cases", tags=["lifecycle"])


async def run(
    ctx: PlanningApi,
    step: Callable[[SqlUnitOfWork, CaseStore], Awaitable[SipCase]],
    case_id: UUID | None = None,
    actor: str | None = None,
    request: Request | None = None,
) -> CaseDetail:
    try:
        async with ctx.runtime.unit_of_work() as uow:
            if case_id is not None:
                existing = await ctx.cases(uow.conn).get_case(case_id, for_update=True)
                if existing is None or (actor and not is_member(Caller(actor, "", ""), existing)):
                    raise lifecycle.CaseNotFound(f"no SIP case {case_id}")
                if request is not None and request.headers.get("if-match"):
                    # If-Match: W/"<CarePlan versionId>" → 412 when the plan moved on since it was read
                    row = await ctx.cases(uow.conn).plan_version(case_id)
                    check_if_match(request, row.version if row is not None else 0)
            case = await step(uow, ctx.cases(uow.conn))
    except lifecycle.CaseNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except (InvalidTransition, MissingReason) as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except (lifecycle.PlanRuleViolation, UnknownRecipient) as exc:
        raise HTTPException(422, detail=str(exc)) from None
    except PermanentError as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return CaseDetail.detail(case)


@router.post(
    "", status_code=201, response_model=CaseDetail, summary="Propose a SIP (need identified)",
    openapi_extra=access.PROPOSE,
)  # fmt: skip
async def propose(body: lifecycle.Proposal, caller: CallerDep, ctx: Ctx) -> CaseDetail:
    status, proposer = access.check_proposer(caller, body.proposer_hsa_id)
    if status == 403:
        raise HTTPException(
            403, detail="a SIP is proposed by the calling organisation itself (proposer_hsa_id)"
        )
    body = body.model_copy(update={"proposer_hsa_id": proposer})
    return await run(
        ctx,
        lambda uow, repo: lifecycle.propose(body, repo=repo, directory=ctx.directory, now=ctx.clock.now()),
    )


@router.post(
    "/{case_id}/accept",
    response_model=CaseDetail,
    summary="Take a proposal up: ask consent",
    openapi_extra=access.COMMAND,
)
async def accept(case_id: UUID, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.accept(
            case_id,
            repo=repo,
            outbox=uow,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            policy=ctx.policy,
            deadlines=ctx.deadlines(uow.conn),
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.post(
    "/{case_id}/refuse",
    response_model=CaseDetail,
    summary="Refuse a proposal (reason required)",
    openapi_extra=access.COMMAND,
)
async def refuse(case_id: UUID, body: Reason, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.refuse(
            case_id,
            body.reason,
            repo=repo,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            deadlines=ctx.deadlines(uow.conn),
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.put(
    "/{case_id}/preferences",
    response_model=CaseDetail,
    summary="The person's meeting preferences",
    openapi_extra=access.COMMAND,
)
async def preferences(
    case_id: UUID, body: MeetingPreferences, actor: Actor, request: Request, ctx: Ctx
) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.record_preferences(
            case_id, body, repo=repo, now=ctx.clock.now(), agent_hsa_id=actor
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.post(
    "/{case_id}/invite",
    response_model=CaseDetail,
    summary="Send the invitation (prepared case)",
    openapi_extra=access.COMMAND,
)
async def invite(case_id: UUID, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.invite(
            case_id,
            repo=repo,
            outbox=uow,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            web_base_url=ctx.web_base_url,
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.put(
    "/{case_id}/meeting",
    response_model=CaseDetail,
    summary="Schedule (or move) the SIP meeting",
    openapi_extra=access.COMMAND,
)
async def meeting(case_id: UUID, body: Meeting, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.schedule_meeting(
            case_id,
            body,
            repo=repo,
            outbox=uow,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            web_base_url=ctx.web_base_url,
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.put(
    "/{case_id}/plan",
    response_model=CaseDetail,
    summary="Draft the plan (a new version)",
    openapi_extra=access.COMMAND,
)
async def plan(case_id: UUID, body: PlanContent, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.draft_plan(
            case_id,
            body,
            repo=repo,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            deadlines=ctx.deadlines(uow.conn),
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.post(
    "/{case_id}/plan/approve",
    response_model=CaseDetail,
    summary="Record the person's approval: the drafted version takes effect",
    openapi_extra=access.COMMAND,
)
async def approve(case_id: UUID, body: ApprovalIn, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.approve(
            case_id,
            version=body.version,
            approved_by=body.approved_by,
            method=body.method,
            repo=repo,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            deadlines=ctx.deadlines(uow.conn),
            policy=ctx.policy,
            outbox=uow,
            web_base_url=ctx.web_base_url,
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.post(
    "/{case_id}/follow-up",
    response_model=CaseDetail,
    summary="Follow up: continue, revise or close",
    openapi_extra=access.COMMAND,
)
async def follow_up(case_id: UUID, body: FollowUp, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.follow_up(
            case_id,
            body,
            repo=repo,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            deadlines=ctx.deadlines(uow.conn),
            policy=ctx.policy,
            outbox=uow,
            web_base_url=ctx.web_base_url,
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )


@router.post(
    "/{case_id}/close",
    response_model=CaseDetail,
    summary="Close the SIP (reason required)",
    openapi_extra=access.COMMAND,
)
async def close(case_id: UUID, body: Reason, actor: Actor, request: Request, ctx: Ctx) -> CaseDetail:
    return await run(
        ctx,
        lambda uow, repo: lifecycle.close(
            case_id,
            body.reason,
            repo=repo,
            now=ctx.clock.now(),
            agent_hsa_id=actor,
            deadlines=ctx.deadlines(uow.conn),
            outbox=uow,
            web_base_url=ctx.web_base_url,
        ),
        case_id=case_id,
        actor=actor,
        request=request,
    )
