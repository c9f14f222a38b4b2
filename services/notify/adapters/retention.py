"""What notify prunes (shared/retention.py runs it): the payload of old sent or cancelled notifications,
old inbox rows and published outbox rows.

A notification's payload — the rendered text, the address, the calendar file, the person's meeting
needs — is blanked ``retention_notification_payload_days`` after the notification was made, once it was
sent or cancelled (never while it is pending, sending or failed: the dispatcher or an operator still
needs it). The row itself stays: the delivery record (recipient, channel, status, times, attempts) and
its id, from which the e-mail's Message-ID and the webhook's Communication id are derived, and the
dedupe key (cause message, recipient, channel) that keeps a redelivered command from sending twice.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.adapters.store import notification_details, notification_needs, notifications
from shared.persistence import utcnow
from shared.retention import Keys, Kind, inbox_kind, outbox_kind

#: what a blanked notification's text says (FHIR wants a non-empty payload string)
PRUNED_BODY = "(Innehållet är gallrat efter lagringstiden. / The content was pruned after its retention.)"
#: the states whose payload may go
DONE = ("sent", "cancelled")


def payload_kind(days: int) -> Kind:
    t = notifications

    def candidates(cutoff: Any) -> sa.Select[Any]:
        return (
            sa.select(t.c.id)
            .where(t.c.payload_pruned_at.is_(None), t.c.created_at < cutoff, t.c.status.in_(DONE))
            .order_by(t.c.created_at)
        )

    async def apply(conn: AsyncConnection, keys: Keys) -> int:
        ids = [k[0] for k in keys]
        # the state is checked again: a row is only blanked as sent or cancelled
        result = await conn.execute(
            t.update()
            .where(t.c.id.in_(ids), t.c.status.in_(DONE), t.c.payload_pruned_at.is_(None))
            .values(body=PRUNED_BODY, address=None, payload_pruned_at=utcnow())
        )
        await conn.execute(
            notification_details.update().where(notification_details.c.id.in_(ids)).values(ics=None)
        )
        await conn.execute(notification_needs.delete().where(notification_needs.c.id.in_(ids)))
        return int(result.rowcount or 0)

    return Kind("notification_payload", days, candidates, apply)


def notify_kinds(inbox: sa.Table, outbox: sa.Table, settings: Any) -> list[Kind]:
    return [
        payload_kind(settings.retention_notification_payload_days),
        inbox_kind(inbox, settings.retention_inbox_days),
        outbox_kind(outbox, settings.retention_outbox_days),
    ]
