"""The consent decision: may organisation X receive information category Y for purpose Z about
person P at time T? Pure and deterministic: the answer depends only on the query and the records
passed in (their order does not matter), never on the clock, the database or the environment.

Rules, in order:
1. An unknown category or purpose is denied (``unknown-category``/``unknown-purpose``).
2. The statutory discharge notices of LUS (admission notice, discharge time changed, ready for
   discharge and its revocation, discharged) need no consent: permit, basis ``lus-logistics``.
3. Invitation logistics (time, place, case reference; no health data) needs no consent either
   (basis ``lus-logistics``), but the person decides who is invited: if the person's latest record
   is declined or withdrawn, a guardian objects, or it excludes the organisation, it is denied.
4. Everything else needs a consent in force that covers it: granted, active (not withdrawn, not
   cancelled), within its validity period at T, naming the purpose and the organisation, excluding
   neither the organisation nor the category (or a category it belongs to), and — when the guardians
   gave it — with every guardian the custody needs consenting, no guardian objecting and the person
   still a child at T. A declined record newer than a grant overrides that grant for its purposes.
   Cancelled records are ignored (they never existed); withdrawn records never permit.

A deny names the most recent record that was considered (if any) and why it did not permit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from services.consent.domain import (
    ADULT_AGE,
    CONSENT_CATEGORIES,
    INVITATION_LOGISTICS,
    LUS_NOTICES,
    PURPOSES,
    ConsentRecord,
    category_lineage,
)
from shared.identifiers import InvalidPersonIdentifier, parse_person_identifier

Outcome = Literal["permit", "deny"]
Basis = Literal["consent", "lus-logistics", "none"]

REASONS: dict[str, str] = {
    "consent-permits": "a consent in force covers the organisation, category and purpose",
    "lus-statutory-notice": "a discharge notice the law (LUS 2017:612) prescribes; no consent needed",
    "lus-invitation-logistics": "invitation logistics without health data; no consent needed",
    "unknown-category": "the information category is not known",
    "unknown-purpose": "the purpose is not known",
    "invalid-patient": "the person identifier is not valid",
    "no-consent": "the person has no consent on record for this",
    "consent-declined": "the person (or the guardians) declined",
    "consent-withdrawn": "the consent was withdrawn",
    "consent-expired": "the consent's validity period has ended",
    "consent-not-yet-valid": "the consent's validity period has not begun",
    "purpose-not-consented": "the consent does not cover this purpose",
    "recipient-not-named": "the consent does not name this organisation",
    "organisation-excluded": "the consent excludes this organisation",
    "category-excluded": "the consent excludes this information category",
    "guardian-objects": "a guardian objects",
    "guardian-consent-missing": "not every guardian the custody requires has consented",
    "guardian-consent-lapsed": "the guardians consented for a child who is now an adult",
}


@dataclass(frozen=True)
class DecisionQuery:
    patient_identifier: str
    recipient: str
    category: str
    purpose: str
    at: datetime
    case_id: UUID | None = None


@dataclass(frozen=True)
class DecisionResult:
    outcome: Outcome
    reason: str
    basis: Basis
    consent_id: UUID | None = None

    @property
    def permitted(self) -> bool:
        return self.outcome == "permit"


def _deny(reason: str, consent_id: UUID | None = None) -> DecisionResult:
    return DecisionResult("deny", reason, "none", consent_id)


def _newest_first(records: list[ConsentRecord]) -> list[ConsentRecord]:
    return sorted(records, key=lambda r: (r.recorded_at, str(r.id)), reverse=True)


def _adult_at(patient_identifier: str, at: datetime) -> bool:
    return parse_person_identifier(patient_identifier).age_on(at.date()) >= ADULT_AGE


def evaluate(
    record: ConsentRecord, *, recipient: str, purpose: str, category: str, at: datetime
) -> str | None:
    """Why this one record does not permit the disclosure (a reason code), or None if it does."""
    if record.status == "cancelled":
        return "consent-cancelled"
    if record.status == "withdrawn":
        return "consent-withdrawn"
    if record.decision != "granted":
        return "consent-declined"
    problem = record.guardian_problem()
    if problem:
        return problem
    if record.given_by == "guardians" and _adult_at(record.patient_identifier, at):
        return "guardian-consent-lapsed"
    if at < record.starts_at:
        return "consent-not-yet-valid"
    if record.valid_until is not None and at >= record.valid_until:
        return "consent-expired"
    if purpose not in record.purposes:
        return "purpose-not-consented"
    if recipient in record.excluded_organisations:
        return "organisation-excluded"
    if recipient not in record.recipients:
        return "recipient-not-named"
    if any(c in record.excluded_categories for c in category_lineage(category)):
        return "category-excluded"
    return None


def _relevant(query: DecisionQuery, records: list[ConsentRecord]) -> list[ConsentRecord]:
    return _newest_first(
        [
            r
            for r in records
            if r.patient_identifier == query.patient_identifier
            and r.status != "cancelled"
            and (query.case_id is None or r.case_id is None or r.case_id == query.case_id)
        ]
    )


def decide(query: DecisionQuery, records: list[ConsentRecord] | tuple[ConsentRecord, ...]) -> DecisionResult:
    """Permit or deny, with a reason code and the consent relied on (see the module docstring)."""
    try:
        parse_person_identifier(query.patient_identifier)
    except InvalidPersonIdentifier:
        return _deny("invalid-patient")
    if query.purpose not in PURPOSES:
        return _deny("unknown-purpose")
    if query.category in LUS_NOTICES:
        return DecisionResult("permit", "lus-statutory-notice", "lus-logistics")
    relevant = _relevant(query, list(records))
    if query.category == INVITATION_LOGISTICS:
        if not relevant:
            return DecisionResult("permit", "lus-invitation-logistics", "lus-logistics")
        latest = relevant[0]
        if latest.status == "withdrawn":
            return _deny("consent-withdrawn", latest.id)
        if latest.decision != "granted":
            return _deny("consent-declined", latest.id)
        if any(g.stance == "objects" for g in latest.guardians):
            return _deny("guardian-objects", latest.id)
        if query.recipient in latest.excluded_organisations:
            return _deny("organisation-excluded", latest.id)
        return DecisionResult("permit", "lus-invitation-logistics", "lus-logistics", latest.id)
    if query.category not in CONSENT_CATEGORIES:
        return _deny("unknown-category")
    first_reason: tuple[str, UUID] | None = None
    for record in relevant:
        if record.decision == "declined" and query.purpose in record.purposes:
            # a decline overrides every older grant; the newest record's reason says most
            return _deny(*(first_reason or ("consent-declined", record.id)))
        reason = evaluate(
            record, recipient=query.recipient, purpose=query.purpose, category=query.category, at=query.at
        )
        if reason is None:
            return DecisionResult("permit", "consent-permits", "consent", record.id)
        if first_reason is None:
            first_reason = (reason, record.id)
    if first_reason is None:
        return _deny("no-consent")
    return _deny(*first_reason)
