"""ConsentRecord → FHIR R4 Consent (validated with fhir.resources' R4B models)."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.consent import Consent

from services.consent.domain import ConsentRecord
from shared.fhir import check_required_bindings
from shared.identifiers import HSA_SYSTEM, parse_person_identifier

PURPOSE_SYSTEM = "urn:sip-suite:codesystem:consent-purpose"
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


def consent_resource(record: ConsentRecord) -> dict[str, Any]:
    pid = parse_person_identifier(record.patient_identifier)
    patient_ref = {"identifier": {"system": pid.system, "value": pid.value}}
    provision: dict[str, Any] = {
        "type": "permit" if record.decision == "granted" else "deny",
        "purpose": [
            {"system": PURPOSE_SYSTEM, "code": p, "display": PURPOSE_DISPLAY[p]} for p in record.purposes
        ],
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "reference": {"identifier": {"system": HSA_SYSTEM, "value": hsa}},
            }
            for hsa in record.recipients
        ],
    }
    period: dict[str, str] = {"start": record.recorded_at.isoformat()}
    if record.valid_until is not None:
        period["end"] = record.valid_until.isoformat()
    provision["period"] = period
    status = {"active": "active", "withdrawn": "inactive", "cancelled": "entered-in-error"}[record.status]
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(record.id),
        "status": status,
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent"}]}],
        "patient": patient_ref,
        "dateTime": record.recorded_at.isoformat(),
        "performer": [
            patient_ref if record.given_by == "patient" else {"display": GIVEN_BY_DISPLAY[record.given_by]}
        ],
        "organization": [{"identifier": {"system": HSA_SYSTEM, "value": record.recorded_by_hsa_id}}],
        "policyRule": {"text": "SoL 2 kap. 7 §; HSL 16 kap. 4 § (samordnad individuell plan)"},
        "provision": provision,
        "extension": [
            {
                "url": "urn:sip-suite:extension:consent-method",
                "valueCode": record.method,
            }
        ],
    }
    if record.case_id is not None:
        data["identifier"] = [{"system": "urn:sip-suite:sip-case", "value": str(record.case_id)}]
    model = Consent.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)
