"""HTTP API of notify: read what was sent to whom and how it went.

The list view leaves out the recipients' addresses (contact data) and the message text; the
single-notification view includes the address and subject. Every notification is also readable
as a FHIR R4 ``Communication`` (``/fhir/Communication/{id}``: completed, or not-done with the
reason — a delivery failure, or "consent withdrawn" for one stopped by a withdrawal). None of
them ever shows personal data of the patient — there is none in notify.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.notify.adapters.fhir import communication_resource
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import Notification
from shared.fhir import fhir_json, outcome_response
from shared.runtime import ServiceRuntime


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


def build_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(tags=["notifications"])

    @router.get("/notifications", response_model=list[NotificationSummary])
    async def list_notifications(
        case_id: UUID = Query(description="The SIP case"),
    ) -> list[NotificationSummary]:
        async with runtime.engine.connect() as conn:
            found = await SqlNotificationRepository(conn).for_case(case_id)
        return [NotificationSummary.of(n) for n in found]

    @router.get("/notifications/{notification_id}", response_model=NotificationDetail)
    async def get_notification(notification_id: UUID) -> NotificationDetail:
        async with runtime.engine.connect() as conn:
            n = await SqlNotificationRepository(conn).get(notification_id)
        if n is None:
            raise HTTPException(status_code=404, detail="notification not found")
        return NotificationDetail.of(n)

    @router.get(
        "/fhir/Communication/{notification_id}",
        tags=["fhir"],
        summary="Read a notification (one delivery) as FHIR R4 Communication",
        response_class=JSONResponse,
    )
    async def fhir_communication(notification_id: str) -> JSONResponse:
        try:
            nid = UUID(notification_id)
        except ValueError:
            return outcome_response(404, f"no Communication with id {notification_id[:64]}", "not-found")
        async with runtime.engine.connect() as conn:
            n = await SqlNotificationRepository(conn).get(nid)
        if n is None:
            return outcome_response(404, f"no Communication with id {nid}", "not-found")
        return fhir_json(communication_resource(n))

    return router
