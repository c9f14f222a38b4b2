"""Who may read what notify sent: the one place that decides, from the verified token only
(``shared.auth.Caller``). Every route names its rule beside it (``shared.access.rule``).

A notification carries no patient identifier, only the case. The caller's relation to one:

- **participant** — the organisation it went to (``recipient_hsa_id``): its own notifications;
- **owner** — the unit that owns (organises) the case (``owner_hsa_id``, stored on each notification
  from the command or event that made it): every notification of the case;
- **operator** — an organisation token with the scope ``sip:operator``: every notification;
- a person, a guardian, any other organisation: nothing (a person's disclosures are in consent's
  audit trail; the hospital, the consent's other recipients and strangers were not written to).

Each read of a notification, permitted or refused, is recorded for the person's audit trail
(``consent.access-recorded.v1`` through the outbox, with the case: consent resolves the person). The
list of a case's notifications is filtered, and each notification it shows is recorded.

With authentication off (a local sandbox) and no acting organisation named, nothing is restricted
and nothing recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal
from uuid import UUID

from services.notify.domain import Notification
from shared.access import reader, record_reads, rule
from shared.auth import Caller
from shared.contracts import AccessBasis, AccessRecorded
from shared.runtime import ServiceRuntime

LIST = rule(
    "A case's notifications: the recipient its own, the case's owning unit all, the operator all; "
    "anyone else an empty list. Each notification shown is recorded in the person's audit trail",
    allowed=("operator",),
    filtered=("owner", "participant"),
)
DELIVERIES = rule(
    "Outbound deliveries of every channel (no address, no text, no person): the operator all; an "
    "organisation those of the cases it owns and those it received (filtered before the limit); a "
    "person 403. Not recorded (no personal data)",
    allowed=("operator",),
    filtered=("owner", "participant"),
)
READ = rule(
    "One notification: its recipient, the case's owning unit, the operator; anyone else 403 "
    "(an OperationOutcome on /fhir). Recorded in the person's audit trail, permitted or not",
    allowed=("owner", "participant", "operator"),
)


def basis(caller: Caller | None, n: Notification) -> AccessBasis | None:
    """The ground on which the caller may read the notification, or None (sandbox: "operator")."""
    if caller is None:
        return "operator"
    if caller.hsa_id is None:
        return None  # a person or a guardian
    if n.owner_hsa_id is not None and caller.hsa_id == n.owner_hsa_id:
        return "owner"
    if caller.hsa_id == n.recipient_hsa_id:
        return "participant"
    if caller.operator:
        return "operator"
    return None


def access_recorded(
    caller: Caller, n: Notification, *, what: str, granted: AccessBasis | None, at: datetime,
    action: Literal["read", "search"] = "read",
) -> AccessRecorded:  # fmt: skip
    """One read of a notification for the person's audit trail: the case (no patient: consent
    resolves the person from the case), who read it (from the token), on which basis."""
    return AccessRecorded(
        service="notify", action=action, outcome="permit" if granted else "deny", basis=granted or "none",
        what=what[:64], accessed_at=at, case_id=n.case_id, correlation_id=n.correlation_id, **reader(caller),
    )  # fmt: skip


async def record(runtime: ServiceRuntime, records: Iterable[AccessRecorded]) -> None:
    await record_reads(runtime.unit_of_work, records)


def what(resource: str, notification_id: UUID) -> str:
    return f"{resource}/{notification_id}"
