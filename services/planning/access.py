"""Who may see a SIP: the organisation that owns the case, and the organisations the person's consent
covers — asked of the consent gate every time, so a withdrawal takes effect at once. Every answer of
the gate is an AuditEvent in the consent service (who asked to see what, and what was decided).

With authentication off (a local sandbox) and no acting organisation named, reads are not restricted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.planning.domain import SipCase
from shared.auth import Caller
from shared.consent_gate import ConsentGateClient, ConsentGateUnavailable

log = logging.getLogger("sip.planning.access")


@dataclass(frozen=True)
class Access:
    allowed: bool
    status: int  # 200, 403 (denied), 503 (the gate could not answer)
    reason: str


ALLOWED_SANDBOX = Access(True, 200, "sandbox: authentication is off")


def is_member(caller: Caller | None, case: SipCase) -> bool:
    return caller is None or caller.hsa_id == case.owner_hsa_id or caller.hsa_id in case.participant_ids


async def may_read_plan(caller: Caller | None, case: SipCase, gate: ConsentGateClient | None) -> Access:
    if caller is None:
        return ALLOWED_SANDBOX
    if caller.hsa_id == case.owner_hsa_id:
        return Access(True, 200, "the owning unit")
    if gate is None:
        return Access(False, 403, "no consent gate configured")
    try:
        reply = await gate.decide(
            patient_identifier=case.patient_identifier, recipient_hsa_id=caller.hsa_id, category="sip-plan",
            purpose="share-information", case_id=case.id, requested_by="planning",
            correlation_id=case.correlation_id,
        )  # fmt: skip
    except ConsentGateUnavailable:
        log.warning("consent gate unavailable; read refused", extra={"case_id": str(case.id)})
        return Access(False, 503, "the consent gate could not answer; try again")
    if reply.decision == "permit":
        return Access(True, 200, reply.reason)
    log.info("read refused by the consent gate", extra={"case_id": str(case.id), "reason": reply.reason})
    return Access(False, 403, f"the person's consent does not cover this organisation ({reply.reason})")
