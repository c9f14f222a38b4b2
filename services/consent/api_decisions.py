"""Deciding "may this organisation receive this information about the person" over HTTP
(``POST /decisions``; the same question over RabbitMQ is :mod:`services.consent.subscribers`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request

from services.consent import access, handlers
from services.consent.access import RULES
from services.consent.api_deps import Ctx, caller_of
from services.consent.api_schemas import DecisionIn
from services.consent.policy import DecisionQuery
from shared.contracts import ConsentDecisionReply

router = APIRouter()


def reply_of(result: Any, audit_id: UUID, at: datetime) -> ConsentDecisionReply:
    return ConsentDecisionReply(
        decision=result.outcome,
        reason=result.reason,
        basis=result.basis,
        consent_id=result.consent_id,
        audit_event_id=audit_id,
        decided_for=at,
    )


@router.post(
    "/decisions",
    response_model=ConsentDecisionReply,
    tags=["decisions"],
    summary="May an organisation receive a category of information about a person for a purpose?",
    responses={403: {"description": "Not an operator, nor the owner or a participant of case_id"}},
    openapi_extra=RULES["decide"],
)
async def post_decision(
    body: DecisionIn, request: Request, ctx: Ctx, x_correlation_id: Annotated[str | None, Header()] = None
) -> ConsentDecisionReply:
    """Permit or deny with a reason code, the basis (consent or LUS logistics) and the consent
    relied on. Every answer is recorded as an AuditEvent (its id is in the answer)."""
    caller = caller_of(request)
    case_request = None
    if body.case_id is not None and not caller.operator:
        async with ctx.store() as repo:
            case_request = await repo.get_request(body.case_id)
    access.may_decide(caller, body.case_id, case_request)
    at = body.at or ctx.clock.now()
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
        records_of=ctx.records_of,
        clock=ctx.clock,
        channel="http",
        requested_by=body.requested_by or caller.hsa_id,
        correlation_id=x_correlation_id,
        audit=ctx.audit_writer.write,
    )
    return reply_of(result, audit_id, at)
