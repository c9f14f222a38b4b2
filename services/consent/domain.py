"""Consent domain: pure rules, no I/O.

Consent (samtycke) is the precondition of a SIP. Purposes are separate (draw up the plan, share
information, send the invitation); a consent names its recipients; it may have an end date.
This module holds the records and the rules that need no storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from shared.errors import PermanentError

Decision = Literal["granted", "declined"]
Purpose = Literal["draw-up-plan", "share-information", "send-invitation"]
GivenBy = Literal["patient", "guardians", "representative"]
Method = Literal["oral", "written"]
Status = Literal["active", "withdrawn", "cancelled"]


class ConsentRuleViolation(PermanentError, ValueError):
    """The consent as given cannot be recorded; the message says why (no personal data).

    Permanent: a message carrying it goes to the dead-letter queue with this reason at once.
    """


@dataclass(frozen=True)
class ConsentRecord:
    id: UUID
    patient_identifier: str
    case_id: UUID | None
    decision: Decision
    purposes: tuple[Purpose, ...]
    recipients: tuple[str, ...]
    given_by: GivenBy
    method: Method
    recorded_by_hsa_id: str
    recorded_at: datetime
    valid_until: datetime | None = None
    status: Status = "active"

    def in_force(self, at: datetime) -> bool:
        if self.status != "active" or self.decision != "granted":
            return False
        return self.valid_until is None or at < self.valid_until

    def permits(self, *, recipient: str, purpose: Purpose, at: datetime) -> bool:
        """May ``recipient`` receive information for ``purpose`` at ``at`` under this consent?"""
        if not self.in_force(at) or purpose not in self.purposes:
            return False
        return not self.recipients or recipient in self.recipients


@dataclass(frozen=True)
class ConsentRequest:
    """Planning asked for the person's consent for a case; staff collect it and record it."""

    case_id: UUID
    patient_identifier: str
    is_child: bool
    purposes: tuple[Purpose, ...]
    proposed_recipients: tuple[str, ...]
    requested_at: datetime
    status: Literal["pending", "answered"] = "pending"
    answered_by: UUID | None = field(default=None)
    correlation_id: str | None = None


def check_new_consent(
    *,
    decision: Decision,
    purposes: tuple[Purpose, ...],
    given_by: GivenBy,
    is_child: bool,
    valid_until: datetime | None,
    now: datetime,
) -> None:
    if decision == "granted" and not purposes:
        raise ConsentRuleViolation("a granted consent must name at least one purpose")
    if valid_until is not None and valid_until <= now:
        raise ConsentRuleViolation("valid_until is in the past")
    if is_child and given_by == "representative":
        raise ConsentRuleViolation("for a child the guardians (or the child, if mature enough) give consent")


def effective_recipients(given: tuple[str, ...], request: ConsentRequest | None) -> tuple[str, ...]:
    """A consent that names no recipients covers those the request proposed (never 'anyone')."""
    if given:
        return given
    if request is not None:
        return request.proposed_recipients
    return ()
