"""Reading the audit log as plain JSON (``GET /audit``): who received, read — or was refused — what
about the person. The search is itself audited. (The FHIR AuditEvent routes are in
:mod:`services.consent.api_fhir`.)"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import ValidationError

from services.consent import access
from services.consent.access import RULES
from services.consent.api_deps import PATIENT_DOC, ConsentApi, Ctx, asked_patient, caller_of
from services.consent.api_schemas import AuditOut
from services.consent.domain import AuditEntry
from shared.auth import Caller
from shared.messaging import describe_error

router = APIRouter()


async def _audit_search(
    ctx: ConsentApi, caller: Caller, pid: str, *, limit: int, outcome: str | None, what: str
) -> list[AuditEntry]:
    now = ctx.clock.now()
    async with ctx.store() as repo:
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
    await ctx.audited(
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
    ctx: Ctx,
    patient: Annotated[str | None, Query(description=PATIENT_DOC)] = None,
    outcome: Annotated[Literal["permit", "deny", "done"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditOut]:
    """The person, a guardian (the child's) and an operator see the whole trail; an organisation
    only the entries it received or read and those of the cases it owns — filtered before
    ``limit``, so a page is never short because of it."""
    caller = caller_of(request)
    try:
        pid = asked_patient(caller, patient, token=True)
    except ValidationError as exc:
        raise HTTPException(422, detail=describe_error(exc)) from None
    entries = await _audit_search(ctx, caller, pid, limit=limit, outcome=outcome, what="AuditEvent?patient")
    return [AuditOut.of(e) for e in entries]
