"""SIP case → FHIR R4 CarePlan with a contained CareTeam and the invitation deadline as a Task.

Validated with fhir.resources' R4B models plus the required-binding check the library lacks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.careplan import CarePlan

from services.planning.domain import SipCase
from shared.fhir import check_required_bindings
from shared.identifiers import HSA_SYSTEM, parse_person_identifier

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
    "suspended": "on-hold",
    "declined": "revoked",
    "closed": "revoked",
    "cancelled": "entered-in-error",
}


def _org(hsa_id: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": HSA_SYSTEM, "value": hsa_id}}
    if display:
        ref["display"] = display
    return ref


def care_plan(case: SipCase, *, version: int, at: datetime, invitation_sent: bool = False) -> dict[str, Any]:
    pid = parse_person_identifier(case.patient_identifier)
    subject = {"identifier": {"system": pid.system, "value": pid.value}}
    owner = next((p for p in case.participants if p.hsa_id == case.owner_hsa_id), None)
    data: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": str(case.id),
        "meta": {"versionId": str(version), "lastUpdated": at.isoformat()},
        "identifier": [{"system": CASE_SYSTEM, "value": case.reference}],
        "status": PLAN_STATUS.get(case.state, "draft"),
        "intent": "plan",
        "category": [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": "SIP", "display": "Samordnad individuell plan"}]}
        ],
        "title": f"Samordnad individuell plan {case.reference}",
        "description": (
            "Samordnad individuell plan efter utskrivning från sluten hälso- och sjukvård. "
            "Insatser, mål och huvudansvar beslutas på SIP-mötet tillsammans med personen."
        ),
        "subject": subject,
        "created": case.opened_at.isoformat(),
        "contained": [
            {
                "resourceType": "CareTeam",
                "id": "careteam",
                "status": "proposed",
                "name": f"SIP {case.reference}",
                "subject": subject,
                "participant": [
                    {"role": [{"text": ROLE_TEXT.get(p.kind, p.kind)}], "member": _org(p.hsa_id, p.name)}
                    for p in case.participants
                ],
            },
            {
                "resourceType": "Task",
                "id": "invitation",
                "status": "completed" if invitation_sent else "requested",
                "intent": "order",
                "code": {"text": "Kallelse till SIP-planering"},
                "description": "Skicka kallelse till SIP-planering inom tidsfristen (LUS 2017:612)",
                "for": subject,
                "authoredOn": case.opened_at.isoformat(),
                "owner": _org(case.owner_hsa_id, owner.name if owner else None),
                "restriction": {"period": {"end": case.invitation_due_at.isoformat()}},
            },
        ],
        "careTeam": [{"reference": "#careteam"}],
        "activity": [{"reference": {"reference": "#invitation", "display": "Kallelse till SIP-planering"}}],
    }
    model = CarePlan.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


def capability_statement(base_url: str, at: datetime) -> dict[str, Any]:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    data = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": at.isoformat(),
        "kind": "instance",
        "software": {"name": "sip-suite planning", "version": "0.1.0"},
        "implementation": {"description": "sip-suite planning FHIR API", "url": f"{base_url}/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": "CarePlan", "interaction": [{"code": "read"}]}],
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                    }
                ],
            }
        ],
        "messaging": [
            {
                "documentation": "Hospital stay notifications: MedCom HospitalNotification and Da Vinci "
                "notification bundles (Bundle.type = message), POST [base]/$process-message.",
                "supportedMessage": [
                    {"mode": "receiver", "definition": "http://medcomfhir.dk/ig/hospitalnotification/"},
                    {"mode": "receiver", "definition": "http://hl7.org/fhir/us/davinci-alerts/"},
                ],
            }
        ],
    }
    model = CapabilityStatement.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)
