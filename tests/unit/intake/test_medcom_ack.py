"""A MedCom HospitalNotification is answered with MedCom's acknowledgement message.

Checked against the MedCom Acknowledgement IG (2.0) profiles: MedComAcknowledgementMessage
(``medcom-messaging-acknowledgement``: Bundle message with id and timestamp, a Provenance,
medcom-acknowledgement-1), MedComAcknowledgementMessageHeader (event ``acknowledgement-message``,
primary destination with the destinationUse extension, sender, source, ``response``) and
MedComMessagingProvenance (activity ``acknowledgement``, ``entity`` revision → the notification's
MessageHeader). The Da Vinci messages keep FHIR's own response message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from services.planning.intake import medcom
from services.planning.intake.fhir_messaging import parse_message_bundle
from shared.fhir import check_required_bindings
from tests.support.narrative_rules import narrative_problems
from tests.unit.intake.messages import CONFORMANCE
from tests.unit.intake.test_intake_properties import Harness

MEDCOM = CONFORMANCE / "medcom-hospitalnotification"
DAVINCI = CONFORMANCE / "davinci-notifications"
AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
BASE = "https://sip.example.se/planning/fhir"


def _examples() -> list[str]:
    return sorted(p.name for p in MEDCOM.glob("*.json") if p.name != "HospitalNotification_Ex_TEK_FCC.json")


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _resolve(bundle: dict[str, Any], reference: str) -> dict[str, Any]:
    kind, rid = reference.split("/")
    matches = [r for r in _resources(bundle, kind) if r["id"] == rid]
    assert len(matches) == 1, f"{reference} is not in the acknowledgement (bundled aggregation)"
    return matches[0]


def _valid_r4(bundle: dict[str, Any]) -> None:
    model = Bundle.model_validate(bundle)
    check_required_bindings(model)
    for entry in bundle["entry"]:  # absolute, and agreeing with the resource id
        assert entry["fullUrl"] == f"{BASE}/{entry['resource']['resourceType']}/{entry['resource']['id']}"


@pytest.mark.parametrize("name", _examples())
def test_every_medcom_notification_gets_a_medcom_acknowledgement(name: str) -> None:
    raw = (MEDCOM / name).read_bytes()
    request = json.loads(raw)
    their_header = request["entry"][0]["resource"]
    out = parse_message_bundle(raw, now=AT, fhir_base=BASE)
    assert out.status == 200, out.body
    ack = out.body
    _valid_r4(ack)
    # MedComAcknowledgementMessage (via MedComMessagingMessage): id, timestamp, profile
    assert ack["type"] == "message" and ack["id"] and ack["timestamp"] == "2026-11-20T09:30:00Z"
    assert ack["meta"]["profile"] == [medcom.ACK_PROFILE]
    # MedComAcknowledgementMessageHeader first
    header = ack["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader" and header["id"]
    assert header["meta"]["profile"] == [medcom.ACK_HEADER_PROFILE]
    assert header["eventCoding"] == {
        "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes",
        "code": "acknowledgement-message",
    }
    assert header["response"] == {"identifier": their_header["id"], "code": "ok"}  # ok: no details
    # back to the notification's sender, at the endpoint it sent from; from its primary receiver
    [destination] = header["destination"]  # primary 1..1, no carbon copy
    assert destination["extension"] == [
        {
            "url": "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-destinationUseExtension",
            "valueCoding": {
                "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-destinationUse",
                "code": "primary",
            },
        }
    ]
    assert destination["endpoint"] == their_header["source"]["endpoint"]
    assert destination["receiver"] == their_header["sender"]
    their_primary = their_header["destination"][0]
    assert header["sender"] == their_primary["receiver"]
    assert header["source"]["endpoint"] == their_primary["endpoint"]
    for ref in (destination["receiver"]["reference"], header["sender"]["reference"]):
        org = _resolve(ack, ref)  # the MedComMessagingOrganization (SOR, EAN) the notification names
        assert org == _resolve(request, ref) and len(org["identifier"]) >= 2
    assert narrative_problems(header["text"]) == []
    # MedComMessagingProvenance for the acknowledgement, beside the notification's own
    provenances = _resources(ack, "Provenance")
    ours = [p for p in provenances if p["target"] == [{"reference": f"MessageHeader/{header['id']}"}]]
    assert len(ours) == 1 and len(provenances) == 2
    [prov] = ours
    assert prov["meta"]["profile"] == [medcom.PROVENANCE_PROFILE]
    assert prov["activity"] == {
        "coding": [
            {
                "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-activityCodes",
                "code": "acknowledgement",
            }
        ]
    }
    assert prov["occurredDateTime"] == prov["recorded"] == ack["timestamp"]
    assert prov["agent"] == [{"who": header["sender"]}]
    assert prov["entity"] == [
        {"role": "revision", "what": {"reference": f"MessageHeader/{their_header['id']}"}}
    ]
    assert narrative_problems(prov["text"]) == []
    [theirs] = [p for p in provenances if p is not prov]
    assert theirs["target"][0]["reference"].endswith(f"MessageHeader/{their_header['id']}")
    # medcom-acknowledgement-1: ok needs no OperationOutcome
    assert _resources(ack, "OperationOutcome") == []
    # the same notification, the same acknowledgement
    assert parse_message_bundle(raw, now=AT, fhir_base=BASE).body == ack


@pytest.mark.parametrize("code", ["fatal-error", "transient-error"])
def test_an_error_acknowledgement_carries_its_operation_outcome(code: str) -> None:
    doc = json.loads((MEDCOM / "HospitalNotification_Ex_STIN_A.json").read_bytes())
    issue = {"severity": "error", "code": "structure", "details": {"text": "Encounter.class is missing"}}
    ack = medcom.acknowledgement(doc, code=code, at=AT, fhir_base=BASE, issues=[issue])  # type: ignore[arg-type]
    _valid_r4(ack)
    header = ack["entry"][0]["resource"]
    assert header["response"]["code"] == code
    outcome = _resolve(ack, header["response"]["details"]["reference"])  # medcom-acknowledgement-1
    assert outcome["issue"] == [issue] and outcome["meta"]["profile"] == [medcom.ACK_OUTCOME_PROFILE]
    assert (
        header["id"]
        != medcom.acknowledgement(doc, code="ok", at=AT, fhir_base=BASE)["entry"][0]["resource"]["id"]
    )


@pytest.mark.parametrize("name", sorted(p.name for p in DAVINCI.glob("*-message-bundle-01.json")))
def test_other_messages_keep_fhirs_response_message(name: str) -> None:
    raw = (DAVINCI / name).read_bytes()
    request = json.loads(raw)
    out = parse_message_bundle(raw, now=AT, fhir_base=BASE)
    assert out.status == 200, out.body
    answer = out.body
    _valid_r4(answer)
    assert "meta" not in answer and answer["id"] and answer["timestamp"] == "2026-11-20T09:30:00Z"
    [entry] = answer["entry"]
    header = entry["resource"]
    assert header["id"] and header["eventCoding"] == request["entry"][0]["resource"]["eventCoding"]
    assert header["response"] == {"identifier": request["entry"][0]["resource"]["id"], "code": "ok"}


def test_recognised_by_event_or_profile() -> None:
    doc = json.loads((MEDCOM / "HospitalNotification_Ex_STIN_A.json").read_bytes())
    assert medcom.is_hospital_notification(doc)
    no_profile = {**doc, "meta": {}}
    assert medcom.is_hospital_notification(no_profile)
    no_event = json.loads(json.dumps(doc))
    del no_event["entry"][0]["resource"]["eventCoding"]
    assert medcom.is_hospital_notification(no_event)  # the profile says so
    del no_event["meta"]
    assert not medcom.is_hospital_notification(no_event)
    davinci = json.loads((DAVINCI / "discharge-notification-message-bundle-01.json").read_bytes())
    assert not medcom.is_hospital_notification(davinci)


def test_in_process_the_stored_acknowledgement_answers_a_resend(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "intake.db")
    try:
        harness.service = type(harness.service)(
            harness.engine, harness.table, clock=lambda: AT, fhir_base=BASE
        )
        raw = (MEDCOM / "HospitalNotification_Ex_STIN_A.json").read_bytes()
        status, first = harness.run(harness.service.handle_fhir(raw))
        again = harness.run(harness.service.handle_fhir(raw))
        assert status == 200 and again == (200, first)
        assert first["meta"]["profile"] == [medcom.ACK_PROFILE]
        assert first["entry"][0]["fullUrl"].startswith(f"{BASE}/MessageHeader/")
        _valid_r4(first)
    finally:
        harness.close()
