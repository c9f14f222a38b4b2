"""FHIR R4 message bundles (MedCom HospitalNotification, Da Vinci) → events / OperationOutcome."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from services.planning.intake.fhir_messaging import MEDCOM_ACTIVITY_SYSTEM, parse_message_bundle
from shared.identifiers import PERSONNUMMER_SYSTEM
from tests.support.personnummer import ADULT
from tests.unit.intake.messages import CONFORMANCE, bad_check_digit

MEDCOM = CONFORMANCE / "medcom-hospitalnotification"
DAVINCI = CONFORMANCE / "davinci-notifications"
INVALID_MEDCOM = {"HospitalNotification_Ex_TEK_FCC.json"}


def _need(path: Path) -> None:
    assert path.exists(), f"conformance examples missing at {path} (tests/conformance)"


def _medcom_files() -> list[str]:
    if not MEDCOM.exists():
        return ["<missing>"]
    return sorted(p.name for p in MEDCOM.glob("*.json") if p.name not in INVALID_MEDCOM)


def _expected_from_provenance(bundle: dict[str, Any]) -> tuple[str, str | None, str]:
    """Independent expectation: the activity code of the Provenance that targets this MessageHeader."""
    header = bundle["entry"][0]["resource"]
    target = f"MessageHeader/{header['id']}"
    provs = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and any(t.get("reference") == target for t in e["resource"].get("target", []))
    ]
    assert len(provs) == 1
    code = provs[0]["activity"]["coding"][0]["code"]
    base_code = code
    modifier = None
    for prefix, kind in (("cancel-", "cancelled"), ("revise-", "corrected")):
        if code.startswith(prefix):
            modifier, base_code = kind, code[len(prefix) :]
    base = {"admit": "admitted", "discharge": "discharged", "start": "leave-started", "end": "leave-ended"}[
        base_code.split("-")[0]
    ]
    if modifier:
        return modifier, base, code
    return base, None, code


@pytest.mark.parametrize("name", _medcom_files())
def test_medcom_examples_map_to_provenance_activity(name: str) -> None:
    _need(MEDCOM)
    raw = (MEDCOM / name).read_bytes()
    bundle = json.loads(raw)
    kind, base, code = _expected_from_provenance(bundle)
    out = parse_message_bundle(raw)
    assert out.status == 200, out.body
    assert out.body["resourceType"] == "Bundle"
    assert out.body["entry"][0]["resource"]["response"] == {
        "identifier": bundle["entry"][0]["resource"]["id"],
        "code": "ok",
    }
    first = out.events[0]
    assert first.kind == kind
    assert first.source_event_code == code
    assert first.source == "fhir"
    assert first.source_message_id == bundle["entry"][0]["resource"]["id"]
    if kind == "cancelled":
        assert first.cancels == base and first.cancels_message_id
    if kind == "corrected":
        assert first.corrects == base and first.corrects_message_id
    # Danish CPR is another identifier system: passed through untouched
    assert first.patient.system == "urn:oid:1.2.208.176.1.2"
    assert first.patient.kind == "other"
    assert first.occurred_at.tzinfo is not None
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    died = patient.get("deceasedBoolean") is True or "deceasedDateTime" in patient
    assert ("deceased" in [e.kind for e in out.events]) == died
    assert all(e.stay_id == first.stay_id for e in out.events)


def test_all_41_valid_medcom_examples_are_present() -> None:
    _need(MEDCOM)
    assert len(_medcom_files()) == 41


def test_medcom_tek_fcc_is_rejected_with_reason() -> None:
    _need(MEDCOM)
    out = parse_message_bundle((MEDCOM / "HospitalNotification_Ex_TEK_FCC.json").read_bytes())
    assert out.status == 422
    assert out.events == ()
    assert out.body["resourceType"] == "OperationOutcome"
    issue = out.body["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] == "structure"
    # TEK_FCC lacks MessageHeader.eventCoding and Encounter.class
    assert "eventCoding" in issue["diagnostics"]
    assert "class" in issue["diagnostics"]
    assert out.message_id == "c4888e5e-ec5c-4b16-a875-7b287e63e214"


@pytest.mark.parametrize(
    ("name", "kind", "code"),
    [
        ("admit-notification-message-bundle-01.json", "admitted", "notification-admit"),
        ("discharge-notification-message-bundle-01.json", "discharged", "notification-discharge"),
        ("transfer-notification-message-bundle-01.json", "admitted", "notification-transfer"),
    ],
)
def test_davinci_examples(name: str, kind: str, code: str) -> None:
    _need(DAVINCI)
    raw = (DAVINCI / name).read_bytes()
    out = parse_message_bundle(raw)
    assert out.status == 200, out.body
    (ev,) = out.events
    assert ev.kind == kind
    assert ev.source_event_code == code
    assert ev.stay_id == "Elden718Halvorson12420181021T2122150700"
    assert ev.patient.kind == "other"
    assert ev.source_message_id == json.loads(raw)["entry"][0]["resource"]["id"]
    if kind == "discharged":
        assert ev.discharge_disposition == "1"
        assert ev.occurred_at.isoformat() == "2018-10-23T22:22:15-07:00"  # Encounter.period.end


def _swedish_bundle(value: str) -> dict[str, Any]:
    _need(MEDCOM)
    bundle = json.loads((MEDCOM / "HospitalNotification_Ex_SLHJ_H.json").read_bytes())
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["identifier"] = [{"system": PERSONNUMMER_SYSTEM, "value": value}]
            res["address"] = [{"district": "1480"}]
    return bundle


def test_swedish_personnummer_is_validated_and_canonical() -> None:
    dashed = f"{ADULT[:8]}-{ADULT[8:]}"
    out = parse_message_bundle(json.dumps(_swedish_bundle(dashed)))
    assert out.status == 200, out.body
    ev = out.events[0]
    assert (ev.patient.system, ev.patient.value, ev.patient.kind) == (
        PERSONNUMMER_SYSTEM,
        ADULT,
        "personnummer",
    )
    assert ev.kommun_code == "1480"
    assert ev.kind == "discharged"


def test_swedish_personnummer_with_bad_check_digit_is_refused() -> None:
    out = parse_message_bundle(json.dumps(_swedish_bundle(bad_check_digit(ADULT))))
    assert out.status == 422
    assert "check digit" in out.body["issue"][0]["diagnostics"]
    assert out.events == ()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"resourceType": "Patient"}', 400, "expected a Bundle"),
        (b'{"resourceType": "Bundle", "type": "collection"}', 422, "Bundle.type"),
        (b'{"resourceType": "Bundle", "type": "message"}', 422, "MessageHeader"),
    ],
)
def test_invalid_input_gives_operation_outcome(body: bytes, status: int, words: str) -> None:
    out = parse_message_bundle(body)
    assert out.status == status
    assert out.body["resourceType"] == "OperationOutcome"
    assert out.body["issue"][0]["severity"] == "error"
    assert words in out.body["issue"][0]["diagnostics"]


def test_unknown_medcom_activity_is_refused() -> None:
    _need(MEDCOM)
    bundle = json.loads((MEDCOM / "HospitalNotification_Ex_STIN_A.json").read_bytes())
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Provenance":
            entry["resource"]["activity"]["coding"] = [{"system": MEDCOM_ACTIVITY_SYSTEM, "code": "teleport"}]
    out = parse_message_bundle(json.dumps(bundle))
    assert out.status == 422
    assert "teleport" in out.body["issue"][0]["diagnostics"]


def test_provenance_for_current_header_is_required() -> None:
    _need(MEDCOM)
    bundle = json.loads((MEDCOM / "HospitalNotification_Ex_STIN_A.json").read_bytes())
    bundle = copy.deepcopy(bundle)
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Provenance"]
    out = parse_message_bundle(json.dumps(bundle))
    assert out.status == 422
    assert "Provenance" in out.body["issue"][0]["diagnostics"]
