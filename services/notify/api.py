"""HTTP API of notify: read what was sent to whom and how it went.

The list view leaves out the recipients' addresses (contact data) and the message text; the
single-notification view includes the address and subject. Every notification is also readable
as a FHIR R4 ``Communication`` (``/fhir/Communication/{id}``: completed, or not-done with the
reason — a delivery failure, or "consent withdrawn" for one stopped by a withdrawal). None of
them ever shows personal data of the patient — there is none in notify.

The routes are module-level, on :data:`router`; they take their shared dependencies
(:class:`~services.notify.api_deps.NotifyApi`: runtime, clock, the notification store, FHIR base
URL, on ``app.state.notify_api``) as a FastAPI dependency (``ctx: Ctx``), not from a closure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.notify import access
from services.notify.api_deps import Ctx, NotifyApi
from services.notify.domain import ChannelKind, Notification, Status
from services.notify.fhir import communication_resource
from shared.auth import CallerDep, current_caller
from shared.fhir import fhir_json, outcome_response
from shared.fhir_rest import SearchParam, capability_statement, fhir_route, frozen, parse_search, searchset

COMMUNICATION_SEARCH = (
    SearchParam("about", "reference", "The SIP case's plan: CarePlan/<case id> (Communication.about)"),
)


class NotificationSummary(BaseModel):
    id: UUID
    case_id: UUID
    case_reference: str
    kind: str
    recipient_hsa_id: str
    channel: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str | None
    status_reason: str | None = Field(
        default=None, description="Why it was stopped when cancelled, e.g. 'consent withdrawn'"
    )
    cancelled_at: datetime | None = None
    created_at: datetime

    @classmethod
    def of(cls, n: Notification) -> NotificationSummary:
        return cls(
            id=n.id,
            case_id=n.case_id,
            case_reference=n.case_reference,
            kind=n.kind,
            recipient_hsa_id=n.recipient_hsa_id,
            channel=n.channel,
            status=n.status,
            attempts=n.attempts,
            next_attempt_at=n.next_attempt_at if n.status == "pending" else None,
            sent_at=n.sent_at,
            last_error=n.last_error,
            status_reason=n.status_reason,
            cancelled_at=n.cancelled_at,
            created_at=n.created_at,
        )


class NotificationDetail(NotificationSummary):
    address: str | None
    subject: str
    language: str
    email_message_id: str
    correlation_id: str | None
    calendar_attached: bool
    fhir_url: str

    @classmethod
    def of(cls, n: Notification) -> NotificationDetail:
        return cls(
            **NotificationSummary.of(n).model_dump(),
            address=n.address,
            subject=n.subject,
            language=n.language,
            email_message_id=n.email_message_id,
            correlation_id=n.correlation_id,
            calendar_attached=n.ics is not None,
            fhir_url=f"/fhir/Communication/{n.id}",
        )


router = APIRouter(tags=["notifications"])


async def _load(ctx: NotifyApi, notification_id: UUID) -> Notification | None:
    async with ctx.reading() as repo:
        return await repo.get(notification_id)


@router.get("/notifications", response_model=list[NotificationSummary], openapi_extra=access.LIST)
async def list_notifications(
    caller: CallerDep,
    ctx: Ctx,
    case_id: UUID = Query(description="The SIP case"),
) -> list[NotificationSummary]:
    async with ctx.reading() as repo:
        found = await repo.for_case(case_id)
    shown = [n for n in found if access.basis(caller, n) is not None]
    await ctx.search_recorded(caller, shown, "Notification?case_id")
    return [NotificationSummary.of(n) for n in shown]


@router.get(
    "/deliveries", response_model=list[NotificationSummary], openapi_extra=access.DELIVERIES,
    summary="Outbound deliveries (mail, webhook, SMS) across cases, newest first",
)  # fmt: skip
async def list_deliveries(
    caller: CallerDep,
    ctx: Ctx,
    since: Annotated[datetime | None, Query(description="Created at or after")] = None,
    until: Annotated[datetime | None, Query(description="Created before")] = None,
    recipient: Annotated[str | None, Query(max_length=64, description="Recipient HSA-id")] = None,
    channel: Annotated[ChannelKind | None, Query()] = None,
    status: Annotated[Status | None, Query()] = None,
    case_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[NotificationSummary]:
    seen_by = None
    if caller is not None and not caller.operator:
        if caller.hsa_id is None:
            raise HTTPException(status_code=403, detail="deliveries are for organisations and operators")
        seen_by = caller.hsa_id
    async with ctx.reading() as repo:
        found = await repo.deliveries(
            since=since, until=until, recipient=recipient, channel=channel, status=status,
            case_id=case_id, seen_by=seen_by, limit=limit,
        )  # fmt: skip
    return [NotificationSummary.of(n) for n in found]


@router.get("/notifications/{notification_id}", response_model=NotificationDetail, openapi_extra=access.READ)
async def get_notification(notification_id: UUID, caller: CallerDep, ctx: Ctx) -> NotificationDetail:
    n = await _load(ctx, notification_id)
    if n is None:
        raise HTTPException(status_code=404, detail="notification not found")
    if not await ctx.audited(caller, n, access.what("Notification", n.id)):
        raise HTTPException(status_code=403, detail="only its recipient, the case's owner or an operator")
    return NotificationDetail.of(n)


@router.get("/fhir/metadata", tags=["fhir"], summary="CapabilityStatement (generated from the routes)")
async def fhir_metadata(request: Request, ctx: Ctx) -> JSONResponse:
    statement = capability_statement(
        request.app, name="notify", base_url=ctx.base_url, at=ctx.clock.now(), security=ctx.security
    )
    return fhir_json(statement)


@router.get(
    "/fhir/Communication",
    tags=["fhir"],
    summary="A case's notifications as FHIR Communication: ?about=CarePlan/<case id>, paged",
    response_class=JSONResponse,
    openapi_extra={**access.LIST, **fhir_route(search=COMMUNICATION_SEARCH)},
)
async def fhir_communication_search(request: Request, ctx: Ctx) -> JSONResponse:
    s = parse_search(request, COMMUNICATION_SEARCH)
    about = (s.get("about") or "").rsplit("/fhir/", 1)[-1].removeprefix("CarePlan/").split("/")[0]
    if not about:
        return outcome_response(400, "about is required: Communication?about=CarePlan/<case id>", "required")
    try:
        case_id = UUID(about)
    except ValueError:
        return outcome_response(400, "about must be CarePlan/<case id>", "invalid")
    caller = current_caller(request)
    async with ctx.reading() as repo:
        found = await repo.for_case(case_id)
    # filtered before counting and paging: only what a read by id would show
    shown = [n for n in found if access.basis(caller, n) is not None]
    await ctx.search_recorded(caller, shown, "Communication?about")
    if s.snapshot is not None:
        shown = [n for n in shown if n.created_at <= s.snapshot]
    shown.sort(key=lambda n: (n.created_at, str(n.id)), reverse=True)
    snapshot = frozen(s, (n.created_at for n in shown))
    page = [communication_resource(n) for n in shown[s.offset : s.offset + s.count]]
    return fhir_json(searchset(ctx.base_url, "Communication", s, page, len(shown), snapshot))


@router.get(
    "/fhir/Communication/{notification_id}",
    tags=["fhir"],
    summary="Read a notification (one delivery) as FHIR R4 Communication",
    response_class=JSONResponse,
    openapi_extra=access.READ,
)
async def fhir_communication(notification_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    try:
        nid = UUID(notification_id)
    except ValueError:
        return outcome_response(404, f"no Communication with id {notification_id[:64]}", "not-found")
    n = await _load(ctx, nid)
    if n is None:
        return outcome_response(404, f"no Communication with id {nid}", "not-found")
    if not await ctx.audited(current_caller(request), n, access.what("Communication", n.id)):
        return outcome_response(403, "only its recipient, the case's owner or an operator", "forbidden")
    return fhir_json(communication_resource(n))
