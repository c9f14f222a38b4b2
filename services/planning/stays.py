"""Hospital stays: what planning knows of one stay, and what each hospital event does to it. No I/O.

Every hospital event — HL7 v2 ADT over MLLP, a FHIR message bundle, the RabbitMQ JSON path — arrives
as a :class:`~shared.hospital.HospitalEvent`. :func:`apply` folds it into the stay and says what the
SIP case of that stay must do (:data:`Effect`). The rules:

- **one case per stay**: ready-for-discharge opens it (the law's 3-day clock starts at that exact
  timestamp); a discharge opens it when no ready-for-discharge came first (the discharge time is then
  the earliest known readiness);
- **duplicates and stale events** have no effect: an event of a kind already applied with the same or
  a later time is ignored, and so is a ready-for-discharge older than the latest revocation (and the
  other way round), a leave start older than the latest leave end (and the other way round);
- **a cancel undoes what it cancels**: A13 (cancel discharge) clears the discharge, and when that
  discharge opened the case the case is cancelled; A11 (cancel admission) cancels the stay's case;
  a cancelled ready-for-discharge that opened the case cancels it, otherwise suspends it;
- **out of order**: a cancel that arrives before the event it cancels is remembered, and that event,
  when it arrives, has no effect;
- **ready revoked** suspends the case (its clock stands still); ready again resumes it with a new
  deadline; an older ready-for-discharge arriving late moves the case's readiness earlier;
- **deceased** closes the case.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from shared.hospital import HospitalEvent

Effect = Literal[
    "none",  # recorded on the stay only
    "ignored",  # a duplicate, stale or already-cancelled event
    "open-case",
    "earlier-ready",  # the case's readiness moves earlier (a late, older ready-for-discharge)
    "suspend",
    "resume",
    "cancel-case",
    "close-case",
]

#: kinds whose latest occurrence wins over the other kind of the pair
OPPOSITES = {
    "ready-for-discharge": "ready-revoked",
    "ready-revoked": "ready-for-discharge",
    "leave-started": "leave-ended",
    "leave-ended": "leave-started",
}


@dataclass(frozen=True)
class Cancellation:
    at: datetime
    message_id: str | None  # the cancelled message, when the sender named it


@dataclass(frozen=True)
class Stay:
    hospital_id: str
    stay_id: str
    patient_system: str
    patient_value: str
    patient_kind: str  # personnummer | samordningsnummer | other
    kommun_code: str | None = None
    primary_care_unit: str | None = None
    admitted_at: datetime | None = None
    expected_discharge_at: datetime | None = None
    ready_at: datetime | None = None
    discharged_at: datetime | None = None
    on_leave: bool = False
    deceased_at: datetime | None = None
    #: kind → (time, message id) of the latest applied event of that kind
    applied: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    #: kind → cancellation received for it
    cancelled: dict[str, Cancellation] = field(default_factory=dict)
    case_id: str | None = None
    case_opened_by: str | None = None  # the kind of event that opened the case
    note: str | None = None  # why no case was opened (no SIP needed, no Swedish identifier, ...)

    @classmethod
    def first(cls, ev: HospitalEvent) -> Stay:
        return cls(
            hospital_id=ev.hospital_id or "",
            stay_id=ev.stay_id,
            patient_system=ev.patient.system,
            patient_value=ev.patient.value,
            patient_kind=ev.patient.kind,
        )

    @property
    def swedish(self) -> bool:
        return self.patient_kind in ("personnummer", "samordningsnummer")


def _cancelled_before_arrival(stay: Stay, ev: HospitalEvent) -> bool:
    c = stay.cancelled.get(ev.kind)
    if c is None:
        return False
    if c.message_id is not None:
        return c.message_id == ev.source_message_id
    return ev.occurred_at <= c.at


def _stale(stay: Stay, ev: HospitalEvent) -> bool:
    same = stay.applied.get(ev.kind)
    if same is not None and (same[1] == ev.source_message_id or ev.occurred_at <= same[0]):
        return ev.kind != "corrected" or same[1] == ev.source_message_id
    opposite = OPPOSITES.get(ev.kind)
    if opposite is not None:
        other = stay.applied.get(opposite)
        if other is not None and ev.occurred_at < other[0]:
            return True
    return False


def apply(stay: Stay, ev: HospitalEvent) -> tuple[Stay, Effect]:
    """Fold one event into the stay; return the new stay and what the stay's case must do."""
    changes: dict[str, Any] = {}
    if ev.kommun_code:
        changes["kommun_code"] = ev.kommun_code
    if ev.primary_care_unit:
        changes["primary_care_unit"] = ev.primary_care_unit
    if ev.expected_discharge_at is not None:
        changes["expected_discharge_at"] = ev.expected_discharge_at

    if ev.kind == "cancelled":
        return _cancel(stay, ev, changes)
    if _cancelled_before_arrival(stay, ev) or _stale(stay, ev):
        return stay, "ignored"

    applied = dict(stay.applied)
    applied[ev.kind] = (ev.occurred_at, ev.source_message_id)
    changes["applied"] = applied
    effect: Effect = "none"
    t = ev.occurred_at
    match ev.kind:
        case "admitted":
            changes["admitted_at"] = t
        case "ready-for-discharge":
            changes["ready_at"] = t
            if stay.case_id is None:
                effect = "open-case"
            elif "ready-revoked" in stay.applied:
                effect = "resume"
            elif stay.ready_at is None or t < stay.ready_at:
                effect = "earlier-ready"
        case "ready-revoked":
            changes["ready_at"] = None
            effect = "suspend" if stay.case_id is not None else "none"
        case "discharged":
            changes["discharged_at"] = t
            changes["on_leave"] = False
            if stay.case_id is None:
                effect = "open-case"
        case "leave-started":
            changes["on_leave"] = True
        case "leave-ended":
            changes["on_leave"] = False
        case "deceased":
            changes["deceased_at"] = t
            effect = "close-case" if stay.case_id is not None else "none"
        case "expected-discharge-changed" | "corrected":
            pass
    if ev.kind in ("ready-for-discharge", "ready-revoked"):
        # the latest of the pair is what stands
        applied.pop(OPPOSITES[ev.kind], None)
    return dataclasses.replace(stay, **changes), effect


def _cancel(stay: Stay, ev: HospitalEvent, changes: dict[str, Any]) -> tuple[Stay, Effect]:
    target = ev.cancels
    assert target is not None  # HospitalEvent guarantees it
    previous = stay.cancelled.get(target)
    if previous and previous.message_id == ev.cancels_message_id and previous.at >= ev.occurred_at:
        return stay, "ignored"  # the same cancellation again
    cancelled = dict(stay.cancelled)
    cancelled[target] = Cancellation(ev.occurred_at, ev.cancels_message_id)
    changes["cancelled"] = cancelled
    done = stay.applied.get(target)
    hits = done is not None and (
        ev.cancels_message_id == done[1] if ev.cancels_message_id else done[0] <= ev.occurred_at
    )
    if not hits:
        # nothing to undo yet: remembered, so the cancelled event has no effect when it arrives
        return dataclasses.replace(stay, **changes), "none"
    applied = dict(stay.applied)
    del applied[target]
    changes["applied"] = applied
    opened_it = stay.case_id is not None and stay.case_opened_by == target
    effect: Effect = "none"
    match target:
        case "admitted":
            changes["admitted_at"] = None
            effect = "cancel-case" if stay.case_id is not None else "none"
        case "discharged":
            changes["discharged_at"] = None
            effect = "cancel-case" if opened_it else "none"
        case "ready-for-discharge":
            changes["ready_at"] = None
            effect = "cancel-case" if opened_it else ("suspend" if stay.case_id else "none")
        case "leave-started":
            changes["on_leave"] = False
        case "deceased":
            changes["deceased_at"] = None
        case _:
            pass
    return dataclasses.replace(stay, **changes), effect
