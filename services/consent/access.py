"""Who may do what in consent: the one place it is decided, from the verified token only.

The caller is :class:`shared.auth.Caller` (an organisation's HSA-id, the operator scope, or a person's
personnummer from a citizen e-ID) — never a body field: ``recorded_by_hsa_id`` and
``cancelled_by_hsa_id`` are optional in the bodies and, when given, must be the token's HSA-id. The
routes of :mod:`services.consent.api` carry the rules below as ``openapi_extra`` (:data:`RULES`: the
OpenAPI ``x-sip-access`` extension and the README's authorization table); this module enforces them.

Relations of a caller to a consent record (several may hold; the strongest counts, except that an
exclusion always wins):

- **recorder** — the organisation that recorded it (``recorded_by_hsa_id``). In the authorization
  table it counts as **owner**: it registered the record and answers for the registration (a recorder
  of a case's consent is the case's owner or a participant anyway).
- **owner** — the unit that owns the record's case: its consent request's ``requested_by_hsa_id``.
- **participant** — an organisation the case proposed (the request's ``proposed_recipients``).
- **covered** — a recipient of the consent while it is in force.
- **excluded** — named in the consent's ``excluded_organisations``: denied, whatever else it is.
- **operator** — an organisation token with the scope ``sip:operator`` (reads only, never writes).
- **person** — the person themself (citizen token whose personnummer is the record's).
- **guardian** — a person named as guardian on any (not cancelled) consent of the child, while the
  child is under 18: reads all of the child's consents and audit trail, and may withdraw.
- **stranger** — none of these (gets 403 on a read, an empty answer on a search).

Every read of personal data is audited (:func:`read_entry`), permitted or not, with the basis the
verdict rests on: owner, participant, covered, operator, own-data, guardian or none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from services.consent.domain import AuditEntry, ConsentRecord, ConsentRequest, is_child_on
from shared.access import rule
from shared.auth import Caller
from shared.identifiers import InvalidPersonIdentifier, mask, parse_person_identifier

# ---- the rules, as the routes declare them ------------------------------------------------------
_READERS = ("owner", "participant", "covered", "operator", "person", "guardian")
_AUDIT_ORGS = ("owner", "participant", "hospital", "covered", "excluded", "stranger")
RULES: dict[str, dict[str, Any]] = {
    "record": rule(
        "Record a consent: for a case its owner or a participant; without a case any organisation in "
        "the directory, which becomes the record's owner (recorder). Never a person or an operator",
        allowed=("owner", "participant"),
    ),
    "read": rule(
        "Read a consent: its recorder or the case's owner, a participant, an organisation it covers "
        "while in force, an operator, the person, a guardian named on the child's consents; an "
        "excluded organisation never",
        allowed=_READERS,
    ),
    "search": rule(
        "The person's consents, each filtered by the read rule (filtered before the answer); a person "
        "without patient= gets their own, a guardian the child's; others get []",
        allowed=("operator", "person", "guardian"),
        filtered=("owner", "participant", "covered"),
    ),
    "withdraw": rule(
        "Withdraw: the person (own e-ID), a guardian named on the child's consents, the recorder, the "
        "case's owner or a participant",
        allowed=("owner", "participant", "person", "guardian"),
    ),
    "cancel": rule("Cancel (makulering): the recorder or the case's owner", allowed=("owner",)),
    "requests": rule(
        "Consent requests waiting: the case's owner and participants see their cases; an operator all",
        allowed=("operator",),
        filtered=("owner", "participant"),
    ),
    "decide": rule(
        "Ask a decision: an operator, or the owner or a participant of the named case",
        allowed=("owner", "participant", "operator"),
    ),
    "audit": rule(
        "The person's audit trail: the person, a guardian (the child's), an operator all; an "
        "organisation only what it received or read and the entries of the cases it owns (filtered "
        "before limit/_count)",
        allowed=("operator", "person", "guardian"),
        filtered=_AUDIT_ORGS,
    ),
    "audit-read": rule(
        "One audit entry: as the audit trail — the person, a guardian, an operator; an organisation "
        "only an entry it received or read, or of a case it owns",
        allowed=("operator", "person", "guardian"),
        filtered=_AUDIT_ORGS,
    ),
}

_ORG_BASIS = ("owner", "participant", "covered", "operator")  # strongest first


class Denied(Exception):
    """The caller may not do this: 401 (no caller) or 403; ``detail`` says why (no personal data)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Verdict:
    permit: bool
    basis: str = "none"
    detail: str = ""

    @property
    def outcome(self) -> str:
        return "permit" if self.permit else "deny"


def authenticated(caller: Caller | None) -> Caller:
    if caller is None:
        raise Denied(401, "no caller: send a bearer token (or X-Sip-Organisation in a sandbox)")
    return caller


# ---- relations ----------------------------------------------------------------------------------
def case_relations(hsa_id: str, request: ConsentRequest | None) -> set[str]:
    out: set[str] = set()
    if request is not None:
        if request.requested_by_hsa_id and hsa_id == request.requested_by_hsa_id:
            out.add("owner")
        if hsa_id in request.proposed_recipients:
            out.add("participant")
    return out


def relations(hsa_id: str, record: ConsentRecord, request: ConsentRequest | None, now: datetime) -> set[str]:
    """An organisation's relations to a consent record (the recorder counts as owner)."""
    out = case_relations(hsa_id, request)
    if hsa_id == record.recorded_by_hsa_id:
        out.add("owner")
    if hsa_id in record.recipients and record.in_force(now):
        out.add("covered")
    if hsa_id in record.excluded_organisations:
        out.add("excluded")
    return out


def guardians_of(records: Iterable[ConsentRecord], now: datetime) -> frozenset[str]:
    """The guardians named on a child's consents (cancelled ones left out), while the child is a child."""
    records = list(records)
    if not records or not is_child_on(records[0].patient_identifier, now):
        return frozenset()
    return frozenset(
        g.identifier for r in records if r.status != "cancelled" for g in r.guardians if g.identifier
    )


def person_basis(caller: Caller, patient: str, guardians: frozenset[str]) -> str | None:
    if caller.person_id == patient:
        return "own-data"
    if caller.person_id in guardians:
        return "guardian"
    return None


def _strongest(found: set[str]) -> str | None:
    return next((b for b in _ORG_BASIS if b in found), None)


# ---- reads ----------------------------------------------------------------------------------------
def read_consent(
    caller: Caller,
    record: ConsentRecord,
    request: ConsentRequest | None,
    guardians: frozenset[str],
    now: datetime,
) -> Verdict:
    if caller.is_person:
        basis = person_basis(caller, record.patient_identifier, guardians)
        if basis is None:
            return Verdict(False, detail="a person reads their own consents (or, as guardian, the child's)")
        return Verdict(True, basis)
    assert caller.hsa_id is not None
    found = relations(caller.hsa_id, record, request, now)
    if "excluded" in found:
        return Verdict(False, detail="the person's consent excludes the calling organisation")
    if caller.operator:
        found.add("operator")
    basis = _strongest(found)
    if basis is None:
        return Verdict(False, detail="the calling organisation takes no part in this consent or its case")
    return Verdict(True, basis)


def search_consents(
    caller: Caller,
    patient: str,
    records: list[ConsentRecord],
    requests: dict[UUID, ConsentRequest],
    guardians: frozenset[str],
    now: datetime,
) -> tuple[list[ConsentRecord], Verdict]:
    """The records the caller may read, and the verdict for the search's audit record."""
    seen: list[ConsentRecord] = []
    bases: set[str] = set()
    for r in records:
        v = read_consent(caller, r, requests.get(r.case_id) if r.case_id else None, guardians, now)
        if v.permit:
            seen.append(r)
            bases.add(v.basis)
    if caller.is_person:
        basis = person_basis(caller, patient, guardians)
        return seen, Verdict(basis is not None, basis or "none")
    basis = _strongest(bases) or next(iter(bases), None)
    return seen, Verdict(bool(seen), basis or "none")


@dataclass(frozen=True)
class AuditScope:
    verdict: Verdict
    visible_to: str | None = None  # an organisation: only what it may see (store.audit_visible_to)


def audit_scope(
    caller: Caller,
    patient: str,
    records: list[ConsentRecord],
    requests: list[ConsentRequest],
    now: datetime,
) -> AuditScope:
    """What of the person's audit trail the caller sees: all of it (the person, a guardian, an
    operator), an organisation's share of it, or nothing."""
    if caller.is_person:
        basis = person_basis(caller, patient, guardians_of(records, now))
        if basis is None:
            return AuditScope(Verdict(False, detail="a person reads their own audit trail"))
        return AuditScope(Verdict(True, basis))
    if caller.operator:
        return AuditScope(Verdict(True, "operator"))
    assert caller.hsa_id is not None
    found: set[str] = set()
    for req in requests:
        found |= case_relations(caller.hsa_id, req)
    for r in records:
        found |= relations(caller.hsa_id, r, None, now) - {"excluded"}
    return AuditScope(Verdict(True, _strongest(found) or "none"), visible_to=caller.hsa_id)


def read_audit_entry(
    caller: Caller,
    entry: AuditEntry,
    owned: bool,
    records: list[ConsentRecord],
    requests: list[ConsentRequest],
    now: datetime,
) -> Verdict:
    """One audit entry, by the audit trail's rule; ``owned``: it is of a case (or a consent recorded
    without a case) that the calling organisation owns."""
    scope = audit_scope(caller, entry.patient_identifier, records, requests, now)
    if not scope.verdict.permit:
        return scope.verdict
    if scope.visible_to is not None and not (owned or entry.recipient_hsa_id == scope.visible_to):
        return Verdict(False, detail="an organisation reads only the audit entries that concern it")
    return scope.verdict


def visible_requests(caller: Caller, requests: list[ConsentRequest]) -> list[tuple[ConsentRequest, str]]:
    """Waiting consent requests the caller sees, each with its basis."""
    if caller.is_person:
        return []
    if caller.operator:
        return [(r, "operator") for r in requests]
    assert caller.hsa_id is not None
    out = []
    for r in requests:
        basis = _strongest(case_relations(caller.hsa_id, r))
        if basis is not None:
            out.append((r, basis))
    return out


# ---- changes --------------------------------------------------------------------------------------
def _acting_organisation(caller: Caller, claimed: str | None, field: str) -> str:
    if caller.is_person:
        raise Denied(403, "an organisation's token is required for this step, not a person's")
    if caller.operator:
        raise Denied(403, "an operator's token reads; it does not record, withdraw or cancel consents")
    assert caller.hsa_id is not None
    if claimed is not None and claimed != caller.hsa_id:
        raise Denied(403, f"{field} must be the calling organisation (the token's HSA-id), or left out")
    return caller.hsa_id


def may_record(
    caller: Caller, case_id: UUID | None, request: ConsentRequest | None, claimed: str | None
) -> str:
    """The recorder of a new consent (always the token's organisation), or :class:`Denied`."""
    hsa_id = _acting_organisation(caller, claimed, "recorded_by_hsa_id")
    if case_id is None:
        return hsa_id
    if request is None:
        raise Denied(
            403, "consent has no request for this case: only the case's owner or a participant records it"
        )
    if not case_relations(hsa_id, request):
        raise Denied(403, "only the case's owner or a participant records the consent of this case")
    return hsa_id


def may_withdraw(
    caller: Caller,
    record: ConsentRecord,
    request: ConsentRequest | None,
    guardians: frozenset[str],
    claimed: str | None,
    now: datetime,
) -> tuple[str, str]:
    """Who withdraws — (``status_changed_by``, the audit's ``requested_by``) — or :class:`Denied`.

    The person or a guardian is recorded as ``person`` / ``guardian``; an organisation by its HSA-id.
    """
    if caller.is_person:
        if claimed is not None:
            raise Denied(403, "recorded_by_hsa_id is an organisation's; a person leaves it out")
        basis = person_basis(caller, record.patient_identifier, guardians)
        if basis is None:
            raise Denied(403, "a person withdraws their own consent (or, as guardian, the child's)")
        who = "person" if basis == "own-data" else "guardian"
        return who, subject_of(caller)
    hsa_id = _acting_organisation(caller, claimed, "recorded_by_hsa_id")
    found = relations(hsa_id, record, request, now)
    if "excluded" in found or not found & {"owner", "participant"}:
        raise Denied(403, "the recorder, the case's owner or a participant records a withdrawal")
    return hsa_id, hsa_id


def may_cancel(
    caller: Caller, record: ConsentRecord, request: ConsentRequest | None, claimed: str | None
) -> str:
    hsa_id = _acting_organisation(caller, claimed, "cancelled_by_hsa_id")
    if hsa_id != record.recorded_by_hsa_id and "owner" not in case_relations(hsa_id, request):
        raise Denied(403, "only the recorder or the case's owner cancels a consent")
    return hsa_id


def may_decide(caller: Caller, case_id: UUID | None, request: ConsentRequest | None) -> str:
    """The basis on which the caller asks a decision, or :class:`Denied`."""
    if caller.is_person:
        raise Denied(403, "decisions are asked by the systems of the organisations, not by a person")
    if caller.operator:
        return "operator"
    assert caller.hsa_id is not None
    basis = _strongest(case_relations(caller.hsa_id, request)) if case_id is not None else None
    if basis is None:
        raise Denied(403, "an operator, or the owner or a participant of the named case_id, asks decisions")
    return basis


# ---- the audit record of a read -----------------------------------------------------------------
def subject_of(caller: Caller) -> str:
    """Who at the issuer (token ``sub``, at most 128 characters); masked if it is a personnummer."""
    subject = caller.subject[:128]
    try:
        parse_person_identifier(subject)
    except (InvalidPersonIdentifier, ValueError):
        return subject
    return mask(subject)


def read_entry(
    caller: Caller,
    *,
    patient: str,
    action: str,
    verdict: Verdict,
    what: str,
    now: datetime,
    consent_id: UUID | None = None,
    case_id: UUID | None = None,
    correlation_id: str | None = None,
) -> AuditEntry:
    """The audit record of a read (``action`` read) or search (search) of the person's data."""
    return AuditEntry(
        id=uuid4(),
        recorded_at=now,
        patient_identifier=patient,
        action=action,
        outcome=verdict.outcome,
        reason=what[:64],
        basis=verdict.basis if verdict.permit else "none",
        channel="http",
        recipient_hsa_id=caller.organisation,
        consent_id=consent_id,
        case_id=case_id,
        requested_by=subject_of(caller),
        correlation_id=correlation_id,
    )
