"""SIP case → FHIR CarePlan (R4 by default, R5 on request) with contained CareTeam, Goal, Task,
Appointment and Condition (the needs), and a Provenance per stored version.

Both renderings are validated with fhir.resources (R4B models for R4, the default models for R5) plus
the required-binding check the library lacks (:func:`shared.fhir.check_required_bindings`) — unless
the caller says ``validate=False``, for a version that differs from the previous, validated one only by
what this code derives from the case state (see :func:`care_plan`). The builder emits exactly what the
validated round trip would (``Z`` for UTC, no empty lists), so both give the same resource.

Mapping (see FHIR.md): goals → ``Goal``; each intervention → R4 ``activity.detail`` (goal, performer,
end date) / R5 ``activity.plannedActivityReference`` → ``Task``; deadlines and the follow-up → ``Task``
with ``restriction.period.end``; the meeting → ``Appointment``; the organisation with overall
responsibility → R4 ``author`` / R5 ``custodian``; how the interventions are coordinated →
``description``; what others do, and the person's meeting preferences → ``note``. Every version
carries a generated Swedish narrative (``text``) of all of it: :mod:`services.planning.narrative`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from services.planning.domain import SipCase
from services.planning.narrative import care_plan_text
from services.planning.plan import PlanContent
from shared.fhir import check_required_bindings
from shared.identifiers import HSA_SYSTEM, parse_person_identifier

FhirVersion = Literal["4.0", "5.0"]

# No national SIP profile exists yet; Inera's care-plan type codes (SIP, SPU) are the closest.
# Replace this system with Inera's code system URI when one is published for FHIR.
CATEGORY_SYSTEM = "urn:sip-suite:codesystem:care-plan-type"
CASE_SYSTEM = "urn:sip-suite:sip-case"
ROLE_TEXT = {
    "kommun_social_services": "Kommunens socialtjänst",
    "primary_care_unit": "Vårdcentral (fast vårdkontakt)",
    "hospital": "Sjukhus (slutenvård)",
    "region_other": "Regionen",
    "other": "Annan aktör",
}

#: case state → CarePlan.status (required binding request-status)
PLAN_STATUS = {
    "established": "active",
    "follow_up_due": "active",
    "suspended": "on-hold",
    "declined": "revoked",
    "refused": "revoked",
    "consent_withdrawn": "revoked",
    "closed": "revoked",
    "cancelled": "entered-in-error",
}


def plan_status(case: SipCase) -> str:
    if case.state == "closed" and case.followed_up_at is not None:
        return "completed"
    if case.state == "plan_drafted" and case.plan_in_force is not None:
        return "active"  # a revision waits for approval; the approved plan stays in force
    return PLAN_STATUS.get(case.state, "draft")


def _org(hsa_id: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": HSA_SYSTEM, "value": hsa_id}}
    if display:
        ref["display"] = display
    return ref


def _names(case: SipCase) -> dict[str, str]:
    return {p.hsa_id: p.name for p in case.participants}


def _content(case: SipCase) -> PlanContent | None:
    """What the rendering shows: the plan in force while a revision waits for approval."""
    if case.state == "plan_drafted" and case.plan_in_force is not None:
        return case.plan_in_force
    return case.plan


def care_plan(
    case: SipCase,
    *,
    version: int,
    at: datetime,
    invitation_sent: bool | None = None,
    fhir_version: FhirVersion = "4.0",
    validate: bool = True,
) -> dict[str, Any]:
    """The case as a validated CarePlan resource (JSON-ready dict).

    ``validate=False`` skips the fhir.resources round trip (model_validate, the required-binding check,
    model_dump) and returns the built dict, which equals what validation would return (the unit tests
    hold the two equal for every state, R4 and R5). Only for a version written by a system transition
    whose content is what the code derives from case fields already validated where they entered
    (the plan, the preferences, the meeting: by HTTP commands that render with validation; the person
    identifier, times and organisations: by the message contracts and the directory) — never where
    content from a user or another system first enters the plan.
    """
    r5 = fhir_version == "5.0"
    pid = parse_person_identifier(case.patient_identifier)
    subject = {"identifier": {"system": pid.system, "value": pid.value}}
    names = _names(case)
    owner = names.get(case.owner_hsa_id)
    status = plan_status(case)
    content = _content(case)
    sent = case.invited_at is not None if invitation_sent is None else invitation_sent
    contained: list[dict[str, Any]] = [
        {
            "resourceType": "CareTeam",
            "id": "careteam",
            "status": "active" if status == "active" else "proposed",
            "name": f"SIP {case.reference}",
            "subject": subject,
            "participant": [
                {"role": _role(r5, "Personen"), "member": subject},
                *(
                    {"role": _role(r5, ROLE_TEXT.get(p.kind, p.kind)), "member": _org(p.hsa_id, p.name)}
                    for p in case.participants
                ),
            ],
        }
    ]
    activity: list[dict[str, Any]] = []
    if case.invitation_due_at is not None:
        contained.append(
            {
                "resourceType": "Task",
                "id": "invitation",
                "status": "completed" if sent else "requested",
                "intent": "order",
                "code": {"text": "Kallelse till SIP-planering"},
                "description": "Skicka kallelse till SIP-planering inom tidsfristen (LUS 2017:612)",
                "for": subject,
                "authoredOn": _dt(case.opened_at),
                "owner": _org(case.owner_hsa_id, owner),
                "restriction": {"period": {"end": _dt(case.invitation_due_at)}},
            }
        )
        activity.append(_activity_ref(r5, "#invitation", "Kallelse till SIP-planering"))
    if case.meeting is not None:
        contained.append(_appointment(case, subject, r5))
        activity.append(_activity_ref(r5, "#meeting", "SIP-möte"))
    data: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": str(case.id),
        "meta": {"versionId": str(version), "lastUpdated": _dt(at)},
        "identifier": _identifiers(case),
        "status": status,
        "intent": "plan",
        "category": [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": "SIP", "display": "Samordnad individuell plan"}]}
        ],
        "title": f"Samordnad individuell plan {case.reference}",
        "subject": subject,
        "created": _dt(case.opened_at),
        "period": {"start": _dt(case.opened_at)},
        "careTeam": [{"reference": "#careteam"}],
    }
    notes: list[str] = []
    if content is None:
        data["description"] = (
            "Samordnad individuell plan. Insatser, mål och huvudansvar beslutas på SIP-mötet "
            "tillsammans med personen."
        )
    else:
        data["description"] = content.coordination
        responsible = content.overall_responsibility_hsa_id
        data["custodian" if r5 else "author"] = _org(responsible, names.get(responsible))
        needs = [
            {
                "resourceType": "Condition",
                "id": f"need-{n}",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "category": [{"text": "Behov"}],
                "code": {"text": text},
                "subject": subject,
            }
            for n, text in enumerate(content.needs, 1)
        ]
        contained += needs
        if needs:  # an empty list is no FHIR element: validation drops it
            data["addresses"] = [
                {"reference": {"reference": f"#{c['id']}"}} if r5 else {"reference": f"#{c['id']}"}
                for c in needs
            ]
        for g in content.goals:
            goal: dict[str, Any] = {
                "resourceType": "Goal",
                "id": f"goal-{g.id}",
                "lifecycleStatus": "active" if status == "active" else "proposed",
                "description": {"text": g.description},
                "subject": subject,
            }
            if g.due_date:
                goal["target"] = [{"dueDate": g.due_date.isoformat()}]
            contained.append(goal)
        if content.goals:
            data["goal"] = [{"reference": f"#goal-{g.id}"} for g in content.goals]
        for i in content.interventions:
            performer = _responsible(i.responsible, subject, names)
            if r5:
                task: dict[str, Any] = {
                    "resourceType": "Task",
                    "id": f"insats-{i.id}",
                    "status": "in-progress" if status == "active" else "requested",
                    "intent": "plan",
                    "description": i.description,
                    "for": subject,
                    "owner": performer,
                }
                if i.goal_ids:
                    task["note"] = [{"text": "Mål: " + ", ".join(i.goal_ids)}]
                if i.end_date:
                    task["restriction"] = {"period": {"end": i.end_date.isoformat()}}
                contained.append(task)
                activity.append({"plannedActivityReference": {"reference": f"#insats-{i.id}"}})
            else:
                detail: dict[str, Any] = {
                    "kind": "Task",
                    "description": i.description,
                    "status": "in-progress" if status == "active" else "not-started",
                    "performer": [performer],
                }
                if i.goal_ids:
                    detail["goal"] = [{"reference": f"#goal-{g}"} for g in i.goal_ids]
                if i.end_date:
                    detail["scheduledPeriod"] = {"end": i.end_date.isoformat()}
                activity.append({"detail": detail})
        follow_up = case.follow_up_date or content.follow_up_date
        contained.append(
            {
                "resourceType": "Task",
                "id": "follow-up",
                "status": "completed" if case.followed_up_at and case.state == "closed" else "requested",
                "intent": "plan",
                "code": {"text": "Uppföljning av SIP"},
                "for": subject,
                "owner": _org(responsible, names.get(responsible)),
                "restriction": {"period": {"end": follow_up.isoformat()}},
            }
        )
        activity.append(_activity_ref(r5, "#follow-up", "Uppföljning av SIP"))
        notes += [f"Andra aktörer: {x}" for x in content.others]
    if case.preferences is not None:
        notes.append("Personens önskemål om mötet: " + _preferences_text(case))
    if case.closed_reason and status in ("revoked", "completed", "entered-in-error"):
        notes.append(f"Avslutad: {case.closed_reason}")
    if notes:
        data["note"] = [{"text": n} for n in notes]
    if activity:
        data["activity"] = activity
    data["contained"] = contained
    data["text"] = care_plan_text(
        case,
        status=status,
        content=content,
        names=names,
        role_text=ROLE_TEXT,
        invitation_sent=sent,
        follow_up=case.follow_up_date or (content.follow_up_date if content else None),
        follow_up_done=bool(case.followed_up_at and case.state == "closed"),
    )
    return _validated(data, r5, "CarePlan") if validate else data


def _identifiers(case: SipCase) -> list[dict[str, str]]:
    """The case reference, and the identifier a proposing client gave (``<system>|<value>``)."""
    out = [{"system": CASE_SYSTEM, "value": case.reference}]
    system, sep, value = (case.external_id or "").rpartition("|")
    if sep and system and value:
        out.append({"system": system, "value": value})
    return out


def _dt(value: datetime) -> str:
    """A dateTime/instant as fhir.resources serialises it after validation (pydantic's JSON form):
    ISO 8601, microseconds kept, ``Z`` for UTC."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _role(r5: bool, text: str) -> Any:
    return {"text": text} if r5 else [{"text": text}]


def _activity_ref(r5: bool, ref: str, display: str) -> dict[str, Any]:
    if r5:
        return {"plannedActivityReference": {"reference": ref, "display": display}}
    return {"reference": {"reference": ref, "display": display}}


def _responsible(r: Any, subject: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    if r.kind == "organisation":
        return _org(r.hsa_id, r.name or names.get(r.hsa_id))
    if r.kind == "person":
        return {**subject, "display": "Personen själv"}
    return {"display": r.name or "Närstående"}


def _preferences_text(case: SipCase) -> str:
    p = case.preferences
    assert p is not None
    parts = []
    if p.place:
        parts.append(f"plats: {p.place}")
    if p.time_of_day:
        parts.append(f"tid: {p.time_of_day}")
    if p.longest_duration_minutes:
        parts.append(f"högst {p.longest_duration_minutes} minuter")
    if p.interpreter_language:
        parts.append(f"tolk: {p.interpreter_language}")
    if p.picture_support:
        parts.append("bildstöd")
    if p.disturbances:
        parts.append(f"kan störa: {p.disturbances}")
    if p.room:
        parts.append(f"rummet: {p.room}")
    if not p.attend_all:
        parts.append("deltar inte i hela mötet")
    if p.someone_stays_after:
        parts.append("någon stannar efteråt och går igenom besluten")
    return "; ".join(parts) or "inga särskilda"


def _appointment(case: SipCase, subject: dict[str, Any], r5: bool) -> dict[str, Any]:
    m = case.meeting
    assert m is not None
    participants = [{"actor": subject, "status": "needs-action"}] + [
        {"actor": _org(p.hsa_id, p.name), "status": "needs-action"} for p in case.participants
    ]
    appt: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": "meeting",
        "status": "booked",
        "description": f"SIP-möte {case.reference}",
        "start": _dt(m.start),
        "end": _dt(m.end),
        "participant": participants,
    }
    where = m.location or ""
    if r5:
        appt["subject"] = subject
        if m.video_url:
            appt["virtualService"] = [{"addressUrl": m.video_url}]
        if where:
            appt["note"] = [{"text": f"Plats: {where}"}]
    else:
        text = "; ".join(
            x
            for x in (f"Plats: {where}" if where else "", f"Video: {m.video_url}" if m.video_url else "")
            if x
        )
        appt["comment"] = text
    return appt


def _validated(data: dict[str, Any], r5: bool, kind: str) -> dict[str, Any]:
    from fhir.resources import get_fhir_model_class
    from fhir.resources.R4B import get_fhir_model_class as get_r4b

    model = (get_fhir_model_class if r5 else get_r4b)(kind).model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


def provenance(
    case_id: str, version: int, recorded: datetime, activity: str, agent_hsa_id: str | None,
    reason: str | None, fhir_version: FhirVersion = "4.0",
) -> dict[str, Any]:  # fmt: skip
    """Who changed the plan, when, and why — one Provenance per stored CarePlan version."""
    who = _org(agent_hsa_id) if agent_hsa_id else {"display": "sip-suite planning"}
    data: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": f"{case_id}-{version}",
        "meta": {"versionId": "1", "lastUpdated": recorded.isoformat()},  # a Provenance never changes
        "target": [{"reference": f"CarePlan/{case_id}/_history/{version}"}],
        "recorded": recorded.isoformat(),
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": who,
            }
        ],
    }
    if reason:
        if fhir_version == "4.0":
            data["reason"] = [{"text": reason}]
        else:
            data["authorization"] = [{"concept": {"text": reason}}]  # R5 has no Provenance.reason
    return _validated(data, fhir_version == "5.0", "Provenance")


MESSAGING: list[dict[str, Any]] = [
    {
        "documentation": "Hospital stay notifications: MedCom HospitalNotification and Da Vinci "
        "notification bundles (Bundle.type = message), POST [base]/$process-message.",
        "supportedMessage": [
            {"mode": "receiver", "definition": "http://medcomfhir.dk/ig/hospitalnotification/"},
            {"mode": "receiver", "definition": "http://hl7.org/fhir/us/davinci-alerts/"},
        ],
    }
]
"""The messaging part of planning's CapabilityStatement (the rest is generated from its routes)."""
