"""ConsentRecord → FHIR Consent (R4 by default, validated with fhir.resources' R4B models; R5 on
request, validated with the R5 models), version history as a ``history`` Bundle, and the audit log
as R4 ``AuditEvent`` resources in a ``searchset`` Bundle: decisions, withdrawals and cancellations as
record-lifecycle events, reads and searches of the person's data as RESTful events (IHE BALP
minimal: type ``rest``, subtype ``read`` / ``search-type``, the reading organisation or the person as
the agent, the patient and what was read — never what was disclosed — as entities).

Every resource is validated once here, at the edge, including the required-binding codes
fhir.resources does not check (:func:`shared.fhir.check_required_bindings`). A pure mapping — no I/O,
no store — so not an adapter: the FHIR routes (:mod:`services.consent.api_fhir`) import it directly.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.consent import Consent as ConsentR5
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle as BundleR4
from fhir.resources.R4B.consent import Consent

from services.consent.domain import CATEGORY_DISPLAY, AuditEntry, ConsentRecord
from shared.fhir import FhirValidationError, check_required_bindings
from shared.fhir_rest import history_bundle
from shared.identifiers import HSA_SYSTEM, PERSONNUMMER_SYSTEM, parse_person_identifier
from shared.narrative import day, el, local_time, narrative

FhirVersion = Literal["4.0", "5.0"]

PURPOSE_SYSTEM = "urn:sip-suite:codesystem:consent-purpose"
CATEGORY_SYSTEM = "urn:sip-suite:codesystem:information-category"
CASE_SYSTEM = "urn:sip-suite:sip-case"
EXT = "urn:sip-suite:extension:"
PURPOSE_DISPLAY = {
    "draw-up-plan": "Upprätta samordnad individuell plan",
    "share-information": "Utbyta information mellan deltagarna",
    "send-invitation": "Skicka kallelse till SIP-möte",
}
GIVEN_BY_DISPLAY = {
    "patient": "Personen själv",
    "guardians": "Vårdnadshavare",
    "representative": "Företrädare",
}
POLICY_TEXT = "SoL 2 kap. 7 §; HSL 16 kap. 4 § (samordnad individuell plan)"
_STATUS = {"active": "active", "withdrawn": "inactive", "cancelled": "entered-in-error"}
_IRCP = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP",
            "display": "information recipient",
        }
    ]
}
_CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent"}]}]


def _iso(value: datetime) -> str:
    return value.isoformat()


def _patient_ref(record_or_value: ConsentRecord | str) -> dict[str, Any]:
    value = record_or_value if isinstance(record_or_value, str) else record_or_value.patient_identifier
    pid = parse_person_identifier(value)
    return {"type": "Patient", "identifier": {"system": pid.system, "value": pid.value}}


def _org_ref(hsa: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": HSA_SYSTEM, "value": hsa}}


def _purpose(code: str) -> dict[str, str]:
    return {"system": PURPOSE_SYSTEM, "code": code, "display": PURPOSE_DISPLAY.get(code, code)}


def _category_concept(code: str) -> dict[str, Any]:
    return {
        "coding": [{"system": CATEGORY_SYSTEM, "code": code, "display": CATEGORY_DISPLAY.get(code, code)}]
    }


def _guardian_refs(record: ConsentRecord, *, consenting_only: bool) -> list[dict[str, Any]]:
    out = []
    for g in record.guardians:
        if consenting_only and g.stance != "consents":
            continue
        ref: dict[str, Any] = {"type": "RelatedPerson", "display": GIVEN_BY_DISPLAY["guardians"]}
        if g.identifier:
            ref["identifier"] = {"system": PERSONNUMMER_SYSTEM, "value": g.identifier}
        out.append(ref)
    return out


def _givers(record: ConsentRecord) -> list[dict[str, Any]]:
    if record.given_by == "patient":
        return [_patient_ref(record)]
    if record.given_by == "guardians" and record.guardians:
        return _guardian_refs(record, consenting_only=True) or [{"display": GIVEN_BY_DISPLAY["guardians"]}]
    return [{"display": GIVEN_BY_DISPLAY[record.given_by]}]


def _extensions(record: ConsentRecord) -> list[dict[str, Any]]:
    ext: list[dict[str, Any]] = [{"url": f"{EXT}consent-method", "valueCode": record.method}]
    ext.append({"url": f"{EXT}given-by", "valueCode": record.given_by})
    if record.custody:
        ext.append({"url": f"{EXT}custody", "valueCode": record.custody})
    if record.child_view:
        ext.append({"url": f"{EXT}child-view", "valueCode": record.child_view})
    for g in record.guardians:
        sub: list[dict[str, Any]] = [{"url": "stance", "valueCode": g.stance}]
        if g.identifier:
            sub.append(
                {"url": "guardian", "valueIdentifier": {"system": PERSONNUMMER_SYSTEM, "value": g.identifier}}
            )
        ext.append({"url": f"{EXT}guardian-statement", "extension": sub})
    ext.append(
        {
            "url": f"{EXT}recorded-by",
            "valueIdentifier": {"system": HSA_SYSTEM, "value": record.recorded_by_hsa_id},
        }
    )
    if record.status != "active":
        change: list[dict[str, Any]] = [{"url": "status", "valueCode": record.status}]
        if record.status_changed_at:
            change.append({"url": "at", "valueDateTime": _iso(record.status_changed_at)})
        if record.status_changed_by_hsa_id in ("person", "guardian"):  # with their own e-ID
            change.append({"url": "by", "valueCode": record.status_changed_by_hsa_id})
        elif record.status_changed_by_hsa_id:
            change.append(
                {
                    "url": "by",
                    "valueIdentifier": {"system": HSA_SYSTEM, "value": record.status_changed_by_hsa_id},
                }
            )
        if record.status_reason:
            change.append({"url": "reason", "valueCode": record.status_reason})
        ext.append({"url": f"{EXT}status-change", "extension": change})
    return ext


def _period(record: ConsentRecord) -> dict[str, str]:
    period = {"start": _iso(record.starts_at)}
    if record.ends_at is not None:
        period["end"] = _iso(record.ends_at)
    return period


def _exclusions(record: ConsentRecord, *, r4: bool) -> list[dict[str, Any]]:
    """Nested provisions: what the consent does not cover (R4 type deny; R5 exceptions to the root)."""
    if record.decision != "granted":
        return []
    out: list[dict[str, Any]] = []
    for hsa in record.excluded_organisations:
        p: dict[str, Any] = {"actor": [{"role": _IRCP, "reference": _org_ref(hsa)}]}
        out.append({"type": "deny", **p} if r4 else p)
    if record.excluded_categories:
        p = {"code": [_category_concept(c) for c in record.excluded_categories]}
        out.append({"type": "deny", **p} if r4 else p)
    return out


def _meta(record: ConsentRecord) -> dict[str, str]:
    return {
        "versionId": str(record.version),
        "lastUpdated": _iso(record.status_changed_at or record.recorded_at),
    }


def _status(record: ConsentRecord, now: datetime | None) -> str:
    if record.status == "active" and now is not None and record.effective_status(now) == "expired":
        return "inactive"
    return _STATUS[record.status]


_METHOD_TEXT = {"oral": "muntligt", "written": "skriftligt"}
_STANCE_TEXT = {"consents": "samtycker", "objects": "motsätter sig"}
_CHILD_VIEW_TEXT = {
    "agrees": "barnet instämmer",
    "disagrees": "barnet instämmer inte",
    "no-view": "barnet har ingen åsikt",
    "not-heard": "barnet har inte hörts",
}


def consent_text(record: ConsentRecord, status: str) -> dict[str, str]:
    """A short Swedish narrative (``Consent.text``): the decision, its state, who gave it and how, for
    which purposes, to whom, what is excluded, and when it is valid — what the resource holds."""
    pid = parse_person_identifier(record.patient_identifier)
    decision = "Samtycke lämnat" if record.decision == "granted" else "Samtycke nekat"
    state = {
        "active": "gällande",
        "inactive": "återkallat" if record.status == "withdrawn" else "upphört",
        "entered-in-error": "makulerat (felregistrerat)",
    }.get(status, status)
    valid = f"från {day(record.starts_at)}"
    if record.ends_at is not None:
        valid += f" till {day(record.ends_at)}"
    lines: list[Any] = [
        f"Person: {pid.value}",
        el("br"),
        f"Lämnat av: {GIVEN_BY_DISPLAY[record.given_by]}, {_METHOD_TEXT.get(record.method, record.method)}",
        el("br"),
        f"Giltigt {valid}",
        el("br"),
        f"Registrerat {local_time(record.recorded_at)} av {record.recorded_by_hsa_id}",
    ]
    if record.status != "active" and record.status_changed_at is not None:
        what = "Återkallat" if record.status == "withdrawn" else "Makulerat"
        reason = f" ({record.status_reason})" if record.status_reason else ""
        lines += [el("br"), f"{what} {local_time(record.status_changed_at)}{reason}"]
    parts = [
        el("p", el("b", f"{decision} – {state}")),
        el("p", lines),
        el("p", el("b", "Ändamål: "), "; ".join(PURPOSE_DISPLAY.get(p, p) for p in record.purposes)),
    ]
    if record.recipients:
        parts.append(el("p", el("b", "Mottagare: "), ", ".join(record.recipients)))
    excluded = [
        *record.excluded_organisations,
        *(CATEGORY_DISPLAY.get(c, c) for c in record.excluded_categories),
    ]
    if excluded and record.decision == "granted":
        parts.append(el("p", el("b", "Gäller inte: "), "; ".join(excluded)))
    if record.guardians:
        stances = [_STANCE_TEXT.get(g.stance, g.stance) for g in record.guardians]
        parts.append(
            el("p", el("b", "Vårdnadshavare: "), "; ".join(f"{n}: {s}" for n, s in enumerate(stances, 1)))
        )
    if record.child_view:
        parts.append(el("p", el("b", "Barnets inställning: "), _CHILD_VIEW_TEXT.get(record.child_view, "")))
    return narrative(parts)


def consent_r4(record: ConsentRecord, now: datetime | None = None) -> dict[str, Any]:
    provision: dict[str, Any] = {
        "type": "permit" if record.decision == "granted" else "deny",
        "period": _period(record),
        "purpose": [_purpose(p) for p in record.purposes],
    }
    actors = [{"role": _IRCP, "reference": _org_ref(hsa)} for hsa in record.recipients]
    if actors:
        provision["actor"] = actors
    if nested := _exclusions(record, r4=True):
        provision["provision"] = nested
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(record.id),
        "meta": _meta(record),
        "text": consent_text(record, _status(record, now)),
        "extension": _extensions(record),
        "status": _status(record, now),
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": _CATEGORY,
        "patient": _patient_ref(record),
        "dateTime": _iso(record.recorded_at),
        "performer": _givers(record),
        "organization": [_org_ref(record.recorded_by_hsa_id)],
        "policyRule": {"text": POLICY_TEXT},
        "provision": provision,
    }
    if record.case_id is not None:
        data["identifier"] = [{"system": CASE_SYSTEM, "value": str(record.case_id)}]
    model = Consent.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


def consent_r5(record: ConsentRecord, now: datetime | None = None) -> dict[str, Any]:
    provision: dict[str, Any] = {"purpose": [_purpose(p) for p in record.purposes]}
    if nested := _exclusions(record, r4=False):
        provision["provision"] = nested
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(record.id),
        "meta": _meta(record),
        "text": consent_text(record, _status(record, now)),
        "extension": _extensions(record),
        "status": _status(record, now),
        "category": _CATEGORY,
        "subject": _patient_ref(record),
        "date": record.recorded_at.date().isoformat(),
        "period": _period(record),
        "grantor": _givers(record),
        "manager": [_org_ref(record.recorded_by_hsa_id)],
        "regulatoryBasis": [{"text": POLICY_TEXT}],
        "decision": "permit" if record.decision == "granted" else "deny",
        "provision": [provision],
    }
    if record.recipients:
        data["grantee"] = [_org_ref(hsa) for hsa in record.recipients]
    if record.case_id is not None:
        data["identifier"] = [{"system": CASE_SYSTEM, "value": str(record.case_id)}]
    model = ConsentR5.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


def consent_resource(
    record: ConsentRecord, version: FhirVersion = "4.0", now: datetime | None = None
) -> dict[str, Any]:
    return consent_r5(record, now) if version == "5.0" else consent_r4(record, now)


def consent_history(
    versions: list[tuple[int, str, datetime, ConsentRecord]], version: FhirVersion = "4.0", base_url: str = ""
) -> dict[str, Any]:
    """A ``history`` Bundle, newest version first (FHIR's order); bdl-8: each ``fullUrl`` is the
    Consent's own URL, the version is in ``response.etag`` and ``meta.versionId``."""
    items = []
    for vid, change, _changed_at, snapshot in sorted(versions, key=lambda v: v[0], reverse=True):
        resource = consent_resource(snapshot, version)
        resource["meta"]["versionId"] = str(vid)
        items.append(
            (resource, "POST" if change == "created" else "PUT", "201" if change == "created" else "200")
        )
    return validated_bundle(history_bundle(base_url, items), version)


def validated_bundle(data: dict[str, Any], version: FhirVersion = "4.0") -> dict[str, Any]:
    bundle_cls = BundleR5 if version == "5.0" else BundleR4
    model = bundle_cls.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


# ---- audit ----------------------------------------------------------------------------------------
_AUDIT_TYPE = {
    "decision": ("disclose", "Disclose Record Lifecycle Event", "E"),
    "withdrawal": ("amend", "Amend (Update) Record Lifecycle Event", "U"),
    "cancellation": ("deprecate", "Deprecate Record Lifecycle Event", "U"),
}
AUDIT_SUBTYPE_SYSTEM = "urn:sip-suite:codesystem:audit-action"
_AUDIT_ACTIONS = ("C", "R", "U", "D", "E")
_AUDIT_OUTCOMES = ("0", "4", "8", "12")


_REST_SUBTYPE = {"read": ("read", "read", "R"), "search": ("search-type", "search type", "E")}
_SOURCE_TYPE = [
    {
        "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
        "code": "4",
        "display": "Application Server",
    }
]
_ENTITY_PERSON = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
    "code": "1",
    "display": "Person",
}
_ENTITY_OBJECT = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
    "code": "2",
    "display": "System Object",
}
_ROLE_PATIENT = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "1",
    "display": "Patient",
}


def _source(entry: AuditEntry) -> dict[str, Any]:
    service = entry.source or "consent"
    observer = {"display": f"sip-suite {service} service"}
    return {"site": "sip-suite", "observer": observer, "type": _SOURCE_TYPE}


def _details(entry: AuditEntry) -> list[dict[str, Any]]:
    details = [
        {"type": "outcome", "valueString": entry.outcome},
        {"type": "reason", "valueString": entry.reason},
        {"type": "basis", "valueString": entry.basis},
        {"type": "channel", "valueString": entry.channel},
    ]
    if entry.decision_at is not None:
        details.append({"type": "decision-time", "valueString": _iso(entry.decision_at)})
    return details


def access_event(entry: AuditEntry) -> dict[str, Any]:
    """A read or search of the person's data as an R4 AuditEvent (IHE BALP minimal): the reader (an
    organisation with the user at its issuer, or the person / a guardian), on which basis, and what was
    asked for."""
    code, display, action = _REST_SUBTYPE[entry.action]
    if entry.recipient_hsa_id:
        agent: dict[str, Any] = {
            "type": _IRCP,
            "who": _org_ref(entry.recipient_hsa_id),
            "requestor": True,
        }
        if entry.requested_by:
            agent["altId"] = entry.requested_by
    elif entry.basis == "own-data":
        agent = {"who": _patient_ref(entry.patient_identifier), "requestor": True}
    else:
        who = GIVEN_BY_DISPLAY["guardians"] if entry.basis == "guardian" else "a person (citizen e-ID)"
        agent = {"who": {"type": "RelatedPerson", "display": who}, "requestor": True}
        if entry.requested_by:
            agent["altId"] = entry.requested_by
    patient: dict[str, Any] = {
        "what": _patient_ref(entry.patient_identifier),
        "type": _ENTITY_PERSON,
        "role": _ROLE_PATIENT,
    }
    patient["detail"] = _details(entry)
    asked: dict[str, Any] = {"type": _ENTITY_OBJECT, "description": entry.reason}
    if entry.action == "search":
        asked["role"] = {
            "system": "http://terminology.hl7.org/CodeSystem/object-role",
            "code": "24",
            "display": "Query",
        }
        asked["query"] = base64.b64encode(entry.reason.encode()).decode()
    else:
        asked["role"] = {
            "system": "http://terminology.hl7.org/CodeSystem/object-role",
            "code": "4",
            "display": "Domain Resource",
        }
        asked["what"] = {"reference": entry.reason}
    entities = [patient, asked]
    if entry.case_id:
        entities.append({"what": {"identifier": {"system": CASE_SYSTEM, "value": str(entry.case_id)}}})
    return {
        "resourceType": "AuditEvent",
        "id": str(entry.id),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": code, "display": display}],
        "action": action,
        "recorded": _iso(entry.recorded_at),
        "outcome": "4" if entry.outcome == "deny" else "0",
        "outcomeDesc": f"{entry.outcome}: {entry.basis}",
        "agent": [agent],
        "source": _source(entry),
        "entity": entities,
    }


def _with_meta(data: dict[str, Any], entry: AuditEntry) -> dict[str, Any]:
    """An audit record is written once and never changed: always version 1."""
    return {**data, "meta": {"versionId": "1", "lastUpdated": _iso(entry.recorded_at)}}


def audit_event(entry: AuditEntry) -> dict[str, Any]:
    """One audit log row as an R4 AuditEvent: who (organisation) was to receive what, why, under
    which consent, and the answer; a read or search as :func:`access_event`."""
    if entry.action in _REST_SUBTYPE:
        return _with_meta(access_event(entry), entry)
    code, display, action = _AUDIT_TYPE[entry.action]
    outcome = "4" if entry.outcome == "deny" else "0"
    agents: list[dict[str, Any]] = []
    if entry.recipient_hsa_id:
        recipient: dict[str, Any] = {
            "type": _IRCP,
            "who": _org_ref(entry.recipient_hsa_id),
            "requestor": False,
        }
        if entry.purpose:
            recipient["purposeOfUse"] = [{"coding": [_purpose(entry.purpose)]}]
        agents.append(recipient)
    agents.append(
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "AUT",
                        "display": "author (originator)",
                    }
                ]
            },
            "who": {"display": entry.requested_by or "unknown"},
            "requestor": True,
        }
    )
    details = _details(entry)
    entities: list[dict[str, Any]] = [
        {
            "what": _patient_ref(entry.patient_identifier),
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }
    ]
    if entry.category:
        entities.append(
            {
                "what": {"display": CATEGORY_DISPLAY.get(entry.category, entry.category)},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "name": entry.category,
                "description": "information category asked for",
                "detail": details,
            }
        )
    else:
        entities[0]["detail"] = details
    if entry.consent_id:
        entities.append(
            {"what": {"reference": f"Consent/{entry.consent_id}"}, "description": "consent relied on"}
        )
    if entry.case_id:
        entities.append({"what": {"identifier": {"system": CASE_SYSTEM, "value": str(entry.case_id)}}})
    data: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.id),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
            "code": code,
            "display": display,
        },
        "subtype": [{"system": AUDIT_SUBTYPE_SYSTEM, "code": f"consent-{entry.action}"}],
        "action": action,
        "recorded": _iso(entry.recorded_at),
        "outcome": outcome,
        "outcomeDesc": f"{entry.outcome}: {entry.reason}",
        "agent": agents,
        "source": _source(entry),
        "entity": entities,
    }
    if entry.purpose:
        data["purposeOfEvent"] = [{"coding": [_purpose(entry.purpose)]}]
    return _with_meta(data, entry)


def audit_events(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    """AuditEvents (R4) for a search page; validated with their Bundle (:func:`validated_bundle`)."""
    resources = [audit_event(e) for e in entries]
    for r in resources:  # R4B AuditEvent does not carry these required bindings: check them here
        if r["action"] not in _AUDIT_ACTIONS:
            raise FhirValidationError("AuditEvent.action", f"code '{r['action']}' not allowed")
        if r["outcome"] not in _AUDIT_OUTCOMES:
            raise FhirValidationError("AuditEvent.outcome", f"code '{r['outcome']}' not allowed")
    return resources


def audit_event_resource(entry: AuditEntry) -> dict[str, Any]:
    model = AuditEvent.model_validate(audit_event(entry))
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)
