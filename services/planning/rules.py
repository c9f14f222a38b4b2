"""Planning's legal and business rules, each in exactly one place. Pure: no I/O, no clock, no adapters.

The handlers (``handlers.py``), the coordinators' commands (``lifecycle.py``), the deadline policy
(``deadlines.py``) and the deadline store (``adapters/deadline_store.py``) ask these functions and keep
no copy of their logic. The legal background is summarised in ``shared/domain/SIP.md``.

- :func:`admission_notice_due`, :func:`admission_notice_late` — the admission notice within 24 clock
  hours of the admission (lag (2017:612) om samverkan vid utskrivning från sluten hälso- och sjukvård);
- :func:`sip_needed` and :data:`ASSUME_SIP_NEEDED` — a SIP when the person needs help from both kommun
  and region (SoL 2 kap 7 §, HSL 16 kap 4 §; LUS for a discharge), and what an unstated need means;
- :func:`is_child` and :data:`ADULT_AGE` — under 18 the guardians take part and consent (SIP.md, "Who
  may start one");
- :func:`readmission_looks_for_case`, :data:`SUSPEND_ON_READMISSION`, :func:`readmission_resumes` —
  a SIP under way when the person is admitted again stands still until they are ready to leave.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from services.planning.domain import OPEN_STATES
from services.planning.stays import Effect, Stay
from shared.identifiers import parse_person_identifier

# ---- the admission notice (LUS) ---------------------------------------------------------------------
ADMISSION_NOTICE_HOURS = 24
"""LUS (2017:612): the hospital's admission notice (*inskrivningsmeddelande*) reaches kommun and primary
care within 24 hours of the admission. Clock hours: day counting (calendar or working days) and
daylight-saving changes do not apply."""


def admission_notice_due(admitted_at: datetime) -> datetime:
    """When the admission notice of an admission at ``admitted_at`` is due: exactly 24 clock hours later
    (aware UTC). Source: lag (2017:612) om samverkan vid utskrivning från sluten hälso- och sjukvård."""
    if admitted_at.tzinfo is None:
        raise ValueError("deadlines are counted from aware datetimes only")
    return admitted_at.astimezone(UTC) + timedelta(hours=ADMISSION_NOTICE_HOURS)


def admission_notice_late(admitted_at: datetime, received_at: datetime) -> bool:
    """LUS: a notice received after :func:`admission_notice_due` is late; one received at exactly 24 h
    is on time."""
    return received_at > admission_notice_due(admitted_at)


# ---- whether a SIP is needed ------------------------------------------------------------------------
ASSUME_SIP_NEEDED = True
"""What an unstated need means (HL7 ADT and FHIR notifications do not say whether the person needs help
from both kommun and region): hospitals send this hub only the LUS notices of patients who do, so the
need is assumed. Configurable per deployment (``PLANNING_INTAKE_ASSUME_SIP_NEEDED``)."""


def sip_needed(
    needs_kommun_support: bool | None,
    needs_region_support: bool | None,
    *,
    assume: bool = ASSUME_SIP_NEEDED,
) -> bool:
    """A SIP is drawn up when the person needs help from both the kommun and the region (SoL 2 kap 7 §,
    HSL 16 kap 4 §; LUS: the invitation when help from both is needed). A need the message does not
    state (None) counts as ``assume`` (:data:`ASSUME_SIP_NEEDED` unless configured)."""
    kommun = assume if needs_kommun_support is None else needs_kommun_support
    region = assume if needs_region_support is None else needs_region_support
    return kommun and region


# ---- age -------------------------------------------------------------------------------------------
ADULT_AGE = 18
"""Under 18 the guardians (*vårdnadshavare*) are involved and consent; the child is heard (SIP.md, "Who
may start one"; föräldrabalken 6 kap)."""


def is_child(patient_identifier: str, on: date) -> bool:
    """Whether the person (a personnummer or samordningsnummer) is under :data:`ADULT_AGE` on ``on``:
    from the 18th birthday on they are an adult."""
    return parse_person_identifier(patient_identifier).age_on(on) < ADULT_AGE


# ---- readmission -----------------------------------------------------------------------------------
READMISSION = "readmission"
"""Marks a stay that carries a SIP it suspended on admission (``Stay.case_opened_by``)."""

SUSPEND_ON_READMISSION: frozenset[str] = OPEN_STATES - {"need_identified", "suspended"}
"""The SIPs under way that a new admission suspends: every open case taken up (consent asked or later)
and not suspended already. A proposal not yet taken up (``need_identified``) has no clock to stop."""


def readmission_looks_for_case(stay: Stay, event_kind: str, effect: Effect) -> bool:
    """An admission (not a duplicate, nothing else changed) of a person with a Swedish identifier on a
    stay that carries no SIP yet: a SIP of theirs under way (:data:`SUSPEND_ON_READMISSION`) is
    suspended, its clocks stand still (LUS: the invitation clock runs from ready-for-discharge)."""
    return event_kind == "admitted" and effect == "none" and stay.case_id is None and stay.swedish


def readmission_resumes(stay: Stay, event_kind: str, effect: Effect) -> bool:
    """Out of hospital again: on a stay that suspended a SIP on admission, a ready-for-discharge that
    counts (not a duplicate or a stale one) or a discharge resumes the SIP where it was, its invitation
    clock counted from the new readiness."""
    if stay.case_opened_by != READMISSION or event_kind not in ("ready-for-discharge", "discharged"):
        return False
    return effect not in ("ignored", "none") or event_kind == "discharged"
