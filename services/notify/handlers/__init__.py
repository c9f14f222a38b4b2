"""Notify use cases: turn a SendInvitation (with its reminders), a CaseNotice, a DeadlineBreached or a
ConsentWithdrawn into notifications (and cancellations). No transport here.

One module per use case, each with one reason to change:

- :mod:`.invitations` — a SendInvitation → invitations (with the calendar);
- :mod:`.reminders` — the reminder before the meeting, and the deadline escalation;
- :mod:`.notices` — case notices: plan established, follow-up due, case closed;
- :mod:`.withdrawal` — a consent withdrawn: stop what is unsent, tell the participants;
- :mod:`.routing` — the shared rules (routes, meeting needs, consent stop, participants) and
  :func:`~.routing.notification_record`, the one place a notification record is built.

The names callers use are re-exported here.
"""

from services.notify.handlers.invitations import InvitationRefused, accept_invitation
from services.notify.handlers.notices import (
    NEEDS_KINDS,
    NOTICE_KINDS_HANDLED,
    NoticeRefused,
    closed_reason,
    follow_up_due_at,
    handle_case_notice,
)
from services.notify.handlers.reminders import EscalationRefused, escalate_deadline, schedule_reminders
from services.notify.handlers.routing import (
    NO_CHANNEL,
    InvitationOptions,
    Route,
    notification_record,
    routes,
    sender_of,
)
from services.notify.handlers.withdrawal import (
    NOTICE_UNSAFE,
    CalendarCancellation,
    MoreCases,
    WithdrawalOutcome,
    calendar_cancellation,
    cases_of_withdrawal,
    stop_for_withdrawal,
    tell_participants,
)

__all__ = [
    "NEEDS_KINDS",
    "NOTICE_KINDS_HANDLED",
    "NOTICE_UNSAFE",
    "NO_CHANNEL",
    "CalendarCancellation",
    "EscalationRefused",
    "InvitationOptions",
    "InvitationRefused",
    "MoreCases",
    "NoticeRefused",
    "Route",
    "WithdrawalOutcome",
    "accept_invitation",
    "calendar_cancellation",
    "cases_of_withdrawal",
    "closed_reason",
    "escalate_deadline",
    "follow_up_due_at",
    "handle_case_notice",
    "notification_record",
    "routes",
    "schedule_reminders",
    "sender_of",
    "stop_for_withdrawal",
    "tell_participants",
]
