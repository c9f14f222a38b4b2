"""Who may see and change a SIP in planning: the one place that decides, from the verified token only
(``shared.auth.Caller``; a body field never says who acts). Every route names its rule beside it
(``shared.access.rule``); this module enforces them.

The caller's relation to a case:

- **owner** — the unit that owns the case (``owner_hsa_id``); **participant** — an organisation
  taking part (``participants``); **hospital** — the case's hospital (``hospital_hsa_id``);
- **covered** / **excluded** — the consent gate's answer for the organisation, asked on every read
  of plan content so a withdrawal takes effect at once (each answer is an AuditEvent in consent);
  an exclusion denies whatever else the organisation is;
- **operator** — an organisation token with the scope ``sip:operator``: sees every case in the lists
  (masked, no plan content) and every stay, never the plan content on that ground alone;
- **person** — the person themself (citizen token, ``person_id == patient_identifier``);
  **guardian** — a person named as guardian on the child's consent (``guardian_identifiers``);
- **stranger** — none of these: a read answers **404** (the case's existence is not disclosed);
  a relation without the right to read answers **403**.

Reads of a case or a plan (the case with its plan, its deadlines, CarePlan read/vread/_history/
search, Provenance) are allowed to the owner, to participants and the hospital when the consent
covers them (and to any organisation it covers), to the person and to the guardians. Each such
read, permitted or denied, is recorded for the person's audit trail (:func:`access_recorded`,
``consent.access-recorded.v1`` through the outbox) before the answer goes out. Lists with masked
identifiers only (``/cases``, ``/overview``, ``/stays``) are filtered, not recorded.

Commands over a case: the organisations that own it or take part in it; a person's token is
refused (403) — the person's own steps have their own endpoints.

With authentication off (a local sandbox) and no acting organisation named, nothing is restricted
and nothing recorded (there is no reader to record).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from services.planning.domain import SipCase
from services.planning.ports import RelatedTo
from services.planning.stays import Stay
from shared.access import reader, record_reads, rule
from shared.auth import Caller
from shared.consent_gate import ConsentGateClient, ConsentGateUnavailable
from shared.contracts import AccessBasis, AccessRecorded

__all__ = ["Access", "AccessBasis", "access_recorded", "may_read_plan", "record"]
from shared.directory import Directory
from shared.identifiers import InvalidPersonIdentifier, parse_person_identifier
from shared.runtime import ServiceRuntime

log = logging.getLogger("sip.planning.access")

EXCLUDED = "organisation-excluded"


@dataclass(frozen=True)
class Access:
    allowed: bool
    status: int  # 200; 403 (a relation without the right); 404 (a stranger); 503 (the gate could not answer)
    reason: str
    basis: AccessBasis = "none"  # recorded in the person's audit trail


ALLOWED_SANDBOX = Access(True, 200, "sandbox: authentication is off")
NOT_FOUND = "no such SIP case"

# ---- the rules, written beside each route (openapi_extra) ------------------------------------------
ORGANISATIONS = ("owner", "participant", "hospital", "covered", "excluded", "operator", "stranger")
READ_CASE = rule(
    "The case or its plan: the owner; a participant, the hospital or any other organisation only when "
    "the person's consent covers it (an exclusion denies); the person; a guardian named on the child's "
    "consent. Operators see no plan content. A stranger gets 404, a relation without consent 403. "
    "Every read, permitted or denied, is recorded in the person's audit trail.",
    allowed=("owner", "covered", "person", "guardian"),
)
SEARCH_PLANS = rule(
    "Search plans: only the plans the caller could read (filtered before _count and paging); each "
    "plan shown, and each refused one of a case the caller has a relation to, is recorded",
    filtered=("owner", "covered", "person", "guardian"),
)
LIST_CASES = rule(
    "Cases with masked identifiers, no plan content: the owner's, participants', the hospital's own, "
    "the person's own and the guardian's child's; the operator all. Not recorded (no personal data)",
    allowed=("operator",),
    filtered=("owner", "participant", "hospital", "person", "guardian"),
)
LIST_STAYS = rule(
    "Hospital stays (masked identifiers): a hospital its own stays, the operator all, others an "
    "empty list (filtered before the limit)",
    allowed=("operator",),
    filtered=("hospital",),
)
PROCESS_MESSAGE = rule(
    "Receive a hospital's message: organisations of directory kind hospital only (the message states "
    "facts about the hospital's own stays); an operator, another organisation or a person get 403",
    allowed=("hospital",),
)
PROPOSE = rule(
    "Propose a SIP: an organisation, as itself (proposer_hsa_id, when given, must be the token's); "
    "a person's token 403",
    allowed=ORGANISATIONS,
)
COMMAND = rule(
    "A step of the case's lifecycle: the organisations that own it or take part in it; others 404, "
    "a person's token 403",
    allowed=("owner", "participant"),
)
VALIDATE = rule(
    "Validate a CarePlan body: any caller (nothing is stored or disclosed)",
    allowed=(*ORGANISATIONS, "person", "guardian"),
)
CREATE_PLAN = rule(
    "Propose a SIP as a CarePlan: an organisation, as its author; a person's token 403",
    allowed=ORGANISATIONS,
)


# ---- relations --------------------------------------------------------------------------------------
def relation(caller: Caller, case: SipCase) -> AccessBasis:
    """The caller's closest relation to the case without asking the consent gate ("none": stranger)."""
    if caller.person_id is not None:
        if caller.person_id == case.patient_identifier:
            return "own-data"
        if caller.person_id in case.guardian_identifiers:
            return "guardian"
        return "none"
    if caller.hsa_id == case.owner_hsa_id:
        return "owner"
    if caller.hsa_id in case.participant_ids:
        return "participant"
    if caller.hsa_id == case.hospital_hsa_id:
        return "hospital"
    if caller.operator:
        return "operator"
    return "none"


def is_member(caller: Caller | None, case: SipCase) -> bool:
    """May run the case's commands: the owner and the organisations taking part (sandbox: anyone)."""
    return caller is None or (
        caller.hsa_id is not None
        and (caller.hsa_id == case.owner_hsa_id or caller.hsa_id in case.participant_ids)
    )


def in_lists(caller: Caller | None, case: SipCase) -> bool:
    """Shown in /cases and /overview (masked, no plan content)."""
    return caller is None or caller.operator or relation(caller, case) != "none"


def list_filter(caller: Caller | None) -> RelatedTo | None:
    """The store's pre-filter of the lists (None: every case — the sandbox and the operator)."""
    if caller is None or caller.operator:
        return None
    return RelatedTo(hsa_id=caller.hsa_id, person_id=caller.person_id)


def search_filter(caller: Caller | None) -> RelatedTo | None:
    """The store's pre-filter of a plan search: a person's own and children's cases. An organisation's
    search looks at every case that matches (any organisation the consent covers may read the plan:
    the gate is asked per case, the owner's excepted)."""
    if caller is None or caller.person_id is None:
        return None
    return RelatedTo(person_id=caller.person_id)


def stays_filter(caller: Caller | None) -> tuple[bool, str | None]:
    """(may list stays at all, only this hospital's)."""
    if caller is None or caller.operator:
        return True, None
    if caller.hsa_id is None:
        return False, None
    return True, caller.hsa_id


def sees_stay(caller: Caller | None, stay: Stay) -> bool:
    return (
        caller is None or caller.operator or (caller.hsa_id is not None and caller.hsa_id == stay.hospital_id)
    )


def may_send_hospital_messages(caller: Caller | None, directory: Directory) -> bool:
    if caller is None:
        return True  # sandbox
    org = directory.get(caller.hsa_id) if caller.hsa_id else None
    return org is not None and org.kind == "hospital"


def check_proposer(caller: Caller | None, proposer_hsa_id: str | None) -> tuple[int, str | None]:
    """POST /cases: (status, the proposer to record). 403 when the body names another organisation."""
    if caller is None:
        return 200, proposer_hsa_id  # sandbox
    if caller.hsa_id is None:
        return 403, None
    if proposer_hsa_id is not None and proposer_hsa_id != caller.hsa_id:
        return 403, None
    return 200, caller.hsa_id


# ---- reads of plan content ----------------------------------------------------------------------
async def may_read_plan(caller: Caller | None, case: SipCase, gate: ConsentGateClient | None) -> Access:
    if caller is None:
        return ALLOWED_SANDBOX
    rel = relation(caller, case)
    if rel == "own-data":
        return Access(True, 200, "the person's own data", "own-data")
    if rel == "guardian":
        return Access(True, 200, "a guardian named on the child's consent", "guardian")
    if caller.person_id is not None:
        return Access(False, 404, NOT_FOUND, "none")
    if rel == "owner":
        return Access(True, 200, "the owning unit", "owner")
    status = 404 if rel == "none" else 403
    if gate is None:
        return Access(False, status, NOT_FOUND if rel == "none" else "no consent gate configured", rel)
    assert caller.hsa_id is not None  # not a person (above): an organisation token always names one
    try:
        reply = await gate.decide(
            patient_identifier=case.patient_identifier, recipient_hsa_id=caller.hsa_id, category="sip-plan",
            purpose="share-information", case_id=case.id, requested_by="planning",
            correlation_id=case.correlation_id,
        )  # fmt: skip
    except ConsentGateUnavailable:
        log.warning("consent gate unavailable; read refused", extra={"case_id": str(case.id)})
        return Access(False, 503, "the consent gate could not answer; try again", rel)
    if reply.decision == "permit":
        return Access(True, 200, reply.reason, "covered")
    log.info("read refused by the consent gate", extra={"case_id": str(case.id), "reason": reply.reason})
    if rel == "none":
        return Access(False, 404, NOT_FOUND, "none")
    if reply.reason == EXCLUDED:
        return Access(False, 403, "the person's consent excludes this organisation", rel)
    return Access(False, 403, f"the person's consent does not cover this organisation ({reply.reason})", rel)


# ---- the audit trail ----------------------------------------------------------------------------
def access_recorded(
    caller: Caller, *, what: str, basis: AccessBasis, allowed: bool, at: datetime,
    action: Literal["read", "search"] = "read", case: SipCase | None = None,
    patient_identifier: str | None = None, case_id: UUID | None = None,
) -> AccessRecorded:  # fmt: skip
    """One read of a person's data, for the person's audit trail: who (from the token), on which basis,
    what was asked for (resource type and id, or the search's parameter names — never values)."""
    return AccessRecorded(
        service="planning", action=action, outcome="permit" if allowed else "deny", basis=basis,
        what=what[:64], accessed_at=at,
        patient_identifier=case.patient_identifier if case is not None else patient_identifier,
        case_id=case.id if case is not None else case_id,
        correlation_id=case.correlation_id if case is not None else None,
        **reader(caller, guardian=basis == "guardian"),
    )  # fmt: skip


async def record(runtime: ServiceRuntime, records: Iterable[AccessRecorded]) -> None:
    await record_reads(runtime.unit_of_work, records)


def person_of(value: str | None) -> str | None:
    """The 12-digit identifier of a search's patient parameter, or None when it is not one."""
    if not value:
        return None
    try:
        return parse_person_identifier(value).value
    except (InvalidPersonIdentifier, ValueError):
        return None
