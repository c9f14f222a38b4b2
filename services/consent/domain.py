"""Consent domain: pure rules, no I/O.

Consent (samtycke) is the precondition of a SIP. Purposes are separate (draw up the plan, share
information, send the invitation); a consent names its recipients (organisations, HSA-id), may list
exclusions (organisations or information categories it does not cover) and has a validity period.
For a child the guardians give it — both when custody is joint — and the child's own view is
recorded; one guardian objecting blocks. A consent can be withdrawn (återkallelse: immediate,
irreversible, the record is kept) or cancelled (makulering: it was registered by mistake).

This module holds the records and the rules that need no storage; the decision "may X receive Y"
is in :mod:`services.consent.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from shared.errors import PermanentError
from shared.identifiers import parse_person_identifier

Decision = Literal["granted", "declined"]
Purpose = Literal["draw-up-plan", "share-information", "send-invitation"]
PURPOSES: tuple[Purpose, ...] = ("draw-up-plan", "share-information", "send-invitation")
GivenBy = Literal["patient", "guardians", "representative"]
Method = Literal["oral", "written"]
Status = Literal["active", "withdrawn", "cancelled"]
Custody = Literal["joint", "sole"]
Stance = Literal["consents", "objects"]
ChildView = Literal["agrees", "disagrees", "no-view", "not-heard"]
"""The child's own view: agrees, disagrees, was heard but has no view, could not be heard (age)."""
CancelReason = Literal["wrong-person", "registration-error", "duplicate", "not-given"]

ADULT_AGE = 18

# ---- information categories ------------------------------------------------------------------
# Logistics notices the discharge law (LUS, 2017:612) prescribes between hospital, kommun and
# primary care: they carry no health data beyond what the law names, and need no consent.
LUS_NOTICES: tuple[str, ...] = (
    "lus-admission-notice",
    "lus-discharge-time-changed",
    "lus-ready-for-discharge",
    "lus-ready-for-discharge-revoked",
    "lus-discharged",
)
INVITATION_LOGISTICS = "invitation-logistics"
"""Time, place and case reference of a SIP meeting, without health data (LUS; no consent needed,
but the person decides who is invited: a refusal, withdrawal or exclusion is respected)."""

CONSENT_CATEGORIES: tuple[str, ...] = (
    "sip-plan",
    "care-needs",
    "health-data",
    "psychiatric",
    "substance-use",
    "medication",
    "social-services",
)
"""Information that may be shared only under a consent (and not when excluded)."""

CATEGORY_PARENT: dict[str, str] = {
    "psychiatric": "health-data",
    "substance-use": "health-data",
    "medication": "health-data",
}
"""Excluding a parent category excludes its children ("not my health data" covers psychiatry)."""

CATEGORY_DISPLAY: dict[str, str] = {
    "lus-admission-notice": "Inskrivningsmeddelande (LUS)",
    "lus-discharge-time-changed": "Ändrad planerad utskrivningstidpunkt (LUS)",
    "lus-ready-for-discharge": "Meddelande om utskrivningsklar (LUS)",
    "lus-ready-for-discharge-revoked": "Återkallat utskrivningsklar (LUS)",
    "lus-discharged": "Utskrivningsmeddelande (LUS)",
    INVITATION_LOGISTICS: "Kallelse utan hälsouppgifter",
    "sip-plan": "Den samordnade individuella planen",
    "care-needs": "Behov och funktionsförmåga",
    "health-data": "Uppgifter om hälsa",
    "psychiatric": "Psykiatrisk vård och historik",
    "substance-use": "Missbruk och beroende",
    "medication": "Läkemedel",
    "social-services": "Uppgifter från socialtjänsten",
}
ALL_CATEGORIES: tuple[str, ...] = (*LUS_NOTICES, INVITATION_LOGISTICS, *CONSENT_CATEGORIES)


def category_lineage(category: str) -> tuple[str, ...]:
    """The category and the categories it belongs to (for exclusions)."""
    out = [category]
    while category in CATEGORY_PARENT:
        category = CATEGORY_PARENT[category]
        out.append(category)
    return tuple(out)


class ConsentRuleViolation(PermanentError, ValueError):
    """The consent as given cannot be recorded; the message says why (no personal data).

    Permanent: a message carrying it goes to the dead-letter queue with this reason at once.
    """


class ConsentStateConflict(ConsentRuleViolation):
    """The consent is in a state that does not allow the change (e.g. withdrawing a cancelled one)."""


@dataclass(frozen=True)
class GuardianStatement:
    """What one guardian (vårdnadshavare) said. The identifier is optional (not always known)."""

    stance: Stance
    identifier: str | None = None


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
    valid_from: datetime | None = None
    excluded_organisations: tuple[str, ...] = ()
    excluded_categories: tuple[str, ...] = ()
    custody: Custody | None = None
    guardians: tuple[GuardianStatement, ...] = ()
    child_view: ChildView | None = None
    status_changed_at: datetime | None = None
    status_changed_by_hsa_id: str | None = None
    status_reason: str | None = None
    version: int = 1

    @property
    def starts_at(self) -> datetime:
        return self.valid_from or self.recorded_at

    @property
    def ends_at(self) -> datetime | None:
        """End of the validity period: the end date, or the withdrawal if earlier."""
        if self.status == "withdrawn" and self.status_changed_at is not None:
            if self.valid_until is None or self.status_changed_at < self.valid_until:
                return self.status_changed_at
        return self.valid_until

    def effective_status(self, at: datetime) -> str:
        """``active``/``withdrawn``/``cancelled`` as stored, ``expired`` or ``pending`` by time."""
        if self.status != "active":
            return self.status
        if self.valid_until is not None and at >= self.valid_until:
            return "expired"
        if at < self.starts_at:
            return "pending"
        return "active"

    def in_force(self, at: datetime) -> bool:
        if self.status != "active" or self.decision != "granted":
            return False
        return self.starts_at <= at and (self.valid_until is None or at < self.valid_until)

    def permits(self, *, recipient: str, purpose: Purpose, at: datetime, category: str = "sip-plan") -> bool:
        """May ``recipient`` receive ``category`` for ``purpose`` at ``at`` under this consent alone?"""
        from services.consent.policy import evaluate

        return evaluate(self, recipient=recipient, purpose=purpose, category=category, at=at) is None

    def guardian_problem(self) -> str | None:
        """Why the guardians' part does not carry a grant (reason code), or None."""
        if any(g.stance == "objects" for g in self.guardians):
            return "guardian-objects"
        if self.given_by != "guardians":
            return None
        needed = 1 if self.custody == "sole" else 2  # joint custody (the usual case) needs both
        consenting = {g.identifier or f"#{i}" for i, g in enumerate(self.guardians) if g.stance == "consents"}
        if len(consenting) < needed:
            return "guardian-consent-missing"
        return None


@dataclass(frozen=True)
class ConsentDetails:
    """What a consent says beyond the message contract: validity start, exclusions, the guardians."""

    valid_from: datetime | None = None
    excluded_organisations: tuple[str, ...] = ()
    excluded_categories: tuple[str, ...] = ()
    custody: Custody | None = None
    guardians: tuple[GuardianStatement, ...] = ()
    child_view: ChildView | None = None


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
    requested_by_hsa_id: str | None = None  # the unit that owns the case (None: asked before it was kept)


@dataclass(frozen=True)
class AuditEntry:
    """One audited event about a person: a decision (permit/deny), a withdrawal, a cancellation, or a
    read or search of the person's data (``action`` read/search; ``reason`` then says what was read,
    ``recipient_hsa_id`` is the reading organisation, None for a person)."""

    id: UUID
    recorded_at: datetime
    patient_identifier: str
    action: str
    outcome: str
    reason: str
    basis: str
    channel: str
    recipient_hsa_id: str | None = None
    category: str | None = None
    purpose: str | None = None
    consent_id: UUID | None = None
    case_id: UUID | None = None
    decision_at: datetime | None = None
    requested_by: str | None = None
    correlation_id: str | None = None
    source: str | None = None  # the service where it happened (None: consent itself)


def is_child_on(patient_identifier: str, at: datetime) -> bool:
    return parse_person_identifier(patient_identifier).age_on(at.date()) < ADULT_AGE


def check_new_consent(
    *,
    decision: Decision,
    purposes: tuple[Purpose, ...],
    given_by: GivenBy,
    is_child: bool,
    valid_until: datetime | None,
    now: datetime,
    valid_from: datetime | None = None,
    custody: Custody | None = None,
    guardians: tuple[GuardianStatement, ...] = (),
    child_view: ChildView | None = None,
    excluded_categories: tuple[str, ...] = (),
) -> None:
    if decision == "granted" and not purposes:
        raise ConsentRuleViolation("a granted consent must name at least one purpose")
    if valid_until is not None and valid_until <= now:
        raise ConsentRuleViolation("valid_until is in the past")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise ConsentRuleViolation("valid_until must be after valid_from")
    if is_child and given_by == "representative":
        raise ConsentRuleViolation("for a child the guardians (or the child, if mature enough) give consent")
    unknown = [c for c in excluded_categories if c not in CONSENT_CATEGORIES]
    if unknown:
        raise ConsentRuleViolation(
            f"excluded_categories: unknown or not excludable category; allowed: {list(CONSENT_CATEGORIES)}"
        )
    identifiers = [g.identifier for g in guardians if g.identifier]
    if len(identifiers) != len(set(identifiers)):
        raise ConsentRuleViolation("guardians: the same guardian is listed twice")
    if guardians and not is_child:
        raise ConsentRuleViolation("guardians are recorded only for a child (under 18)")
    if given_by == "guardians":
        if not is_child:
            raise ConsentRuleViolation("given_by 'guardians' applies only to a child (under 18)")
        if custody is None:
            raise ConsentRuleViolation("custody (joint or sole) is required when guardians give consent")
        if child_view is None:
            raise ConsentRuleViolation("child_view is required: the child's own view is recorded")
        needed = 2 if custody == "joint" else 1
        if len(guardians) != needed:
            raise ConsentRuleViolation(
                f"custody '{custody}' needs {needed} guardian statement(s), got {len(guardians)}"
            )
    if decision == "granted" and any(g.stance == "objects" for g in guardians):
        raise ConsentRuleViolation(
            "one guardian objects: the consent cannot be granted (record the decision as declined)"
        )


def check_withdrawal(record: ConsentRecord) -> None:
    if record.status == "cancelled":
        raise ConsentStateConflict("a cancelled consent cannot be withdrawn")
    if record.decision != "granted":
        raise ConsentStateConflict("a declined consent has nothing to withdraw")


def effective_recipients(given: tuple[str, ...], request: ConsentRequest | None) -> tuple[str, ...]:
    """A consent that names no recipients covers those the request proposed (never 'anyone')."""
    if given:
        return given
    if request is not None:
        return request.proposed_recipients
    return ()
