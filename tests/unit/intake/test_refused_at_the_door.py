"""Nothing a sender sends is accepted and then fails downstream, and nothing gives a 500:
times the stores cannot hold, JSON nested thousands deep, texts wider than their columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, ValidationError

from services.planning.api_fhir import validate_resource
from services.planning.intake import parse_adt, parse_message_bundle
from shared.contracts import HospitalStayEvent, RecordConsent
from shared.fhir import JsonBodyError, load_json_bounded
from shared.hospital import HospitalEvent
from shared.timestamps import EARLIEST, LATEST, TimeOutOfRange, Timestamp, check_storable
from tests.support.personnummer import ADULT
from tests.unit.intake.messages import CONFORMANCE, adt_bytes

EDGE_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
]


class _Model(BaseModel):
    at: Timestamp


# ---------------------------------------------------------------- the one datetime type


@pytest.mark.parametrize("value", EDGE_TIMES)
def test_timestamp_refuses_times_whose_utc_conversion_overflows_or_the_stores_cannot_hold(value: str) -> None:
    with pytest.raises(ValidationError, match="accepted"):
        _Model(at=value)


def test_timestamp_accepts_times_within_the_range_and_keeps_the_offset() -> None:
    plus_one = timezone(timedelta(hours=1))
    assert _Model(at="2026-03-01T12:00:00+01:00").at == datetime(2026, 3, 1, 12, tzinfo=plus_one)
    assert _Model(at=EARLIEST).at == EARLIEST
    assert _Model(at=LATEST - timedelta(microseconds=1)).at.year == 9997
    with pytest.raises(ValidationError):
        _Model(at=LATEST)
    with pytest.raises(ValidationError, match="timezone"):
        _Model(at="2026-03-01T12:00:00")  # still aware-only


def test_check_storable_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_storable(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert issubclass(TimeOutOfRange, ValueError)
    assert check_storable(datetime(2026, 1, 1, tzinfo=UTC)).year == 2026


def _event(**changes: Any) -> dict[str, Any]:
    return {
        "source": "json", "source_message_id": "m1", "source_event_code": "x", "kind": "ready-for-discharge",
        "occurred_at": "2026-03-01T12:00:00+01:00", "stay_id": "V1", "hospital_id": "H1",
        "patient": {"system": "http://electronichealth.se/identifier/personnummer", "value": ADULT},
        **changes,
    }  # fmt: skip


@pytest.mark.parametrize("value", EDGE_TIMES)
def test_contracts_refuse_times_at_the_edges(value: str) -> None:
    with pytest.raises(ValidationError):
        HospitalStayEvent.model_validate({"event": _event(occurred_at=value)})
    with pytest.raises(ValidationError):
        RecordConsent(patient_identifier=ADULT, decision="granted", recorded_by_hsa_id="SE2321000016-VC001",
                      valid_until=value)  # fmt: skip
    with pytest.raises(ValidationError):
        HospitalStayEvent.model_validate({"event": _event(), "occurred_at": value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("stay_id", "V" * 201), ("hospital_id", "H\x00"), ("source_message_id", "m" * 201),
     ("primary_care_unit", "x\ud800")],
)  # fmt: skip
def test_hospital_event_texts_are_what_the_stores_hold(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        HospitalEvent.model_validate(_event(**{field: value}))
    HospitalEvent.model_validate(_event(**{field: value[:1]}))


# ---------------------------------------------------------------- HL7 v2


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"evn_occurred": "00010101000000+0100"}, "EVN^1^6"),
        ({"evn_occurred": "99991231235959-0100"}, "EVN^1^6"),
        ({"pv2_9": "99991231235959-0100"}, "PV2^1^9"),
        ({"evn_recorded": "99991231235959-1400"}, "EVN^1^2"),
    ],
)
def test_hl7_times_the_store_cannot_hold_get_ae_naming_the_field(kwargs: dict[str, str], where: str) -> None:
    out = parse_adt(adt_bytes("A16", control_id="E1", **kwargs))
    assert out.ack_code == "AE" and out.events == ()
    assert out.error is not None and f"{out.error.segment}^1^{out.error.field}" == where
    assert f"|{where}|102^" in out.ack.decode()


# ---------------------------------------------------------------- FHIR notices


def _bundle() -> dict[str, Any]:
    path = CONFORMANCE / "medcom-hospitalnotification" / "HospitalNotification_Ex_SLHJ_H.json"
    if not path.exists():
        pytest.skip("MedCom conformance examples not present")
    return json.loads(path.read_bytes())


def _set(bundle: dict[str, Any], rtype: str, update: Any) -> dict[str, Any]:
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == rtype:
            update(entry["resource"])
    return bundle


@pytest.mark.parametrize("value", EDGE_TIMES)
@pytest.mark.parametrize(
    ("rtype", "element", "put"),
    [
        ("Encounter", "Encounter.period.end", lambda r, v: r["period"].__setitem__("end", v)),
        ("Encounter", "Encounter.period.start", lambda r, v: r["period"].__setitem__("start", v)),
        ("Provenance", "Provenance.occurredDateTime", lambda r, v: r.__setitem__("occurredDateTime", v)),
    ],
)
def test_fhir_notice_with_a_time_the_store_cannot_hold_is_400_naming_the_element(
    value: str, rtype: str, element: str, put: Any
) -> None:
    out = parse_message_bundle(json.dumps(_set(_bundle(), rtype, lambda r: put(r, value))))
    assert out.status == 400, out.body
    assert out.events == ()
    issue = out.body["issue"][0]
    assert out.body["resourceType"] == "OperationOutcome" and issue["severity"] == "error"
    assert issue["expression"] == [element] and element in issue["diagnostics"]


def test_fhir_notice_with_a_control_character_in_the_stay_id_is_refused_naming_the_element() -> None:
    def stay(r: dict[str, Any]) -> None:
        r["identifier"] = [{"value": "V1\u0000"}]
        r.pop("episodeOfCare", None)

    out = parse_message_bundle(json.dumps(_set(_bundle(), "Encounter", stay)))
    assert out.status in (400, 422) and out.events == ()
    assert out.body["issue"][0].get("expression") in (["Encounter.identifier"], None)


# ---------------------------------------------------------------- JSON nested thousands deep


def _nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize("depth", [101, 5000, 200_000])
def test_bounded_json_parse_refuses_deep_nesting(depth: int) -> None:
    with pytest.raises(JsonBodyError, match="deeper than 100"):
        load_json_bounded(_nested(depth))
    body = b'{"resourceType": "CarePlan", "x": ' + _nested(depth) + b"}"
    with pytest.raises(JsonBodyError):
        load_json_bounded(body)


def test_bounded_json_parse_takes_ordinary_documents() -> None:
    assert load_json_bounded(_nested(100)) == json.loads(_nested(100))
    assert load_json_bounded('{"a": "[[[[[[", "b": [1, {"c": null}]}') == {
        "a": "[[[[[[",
        "b": [1, {"c": None}],
    }
    with pytest.raises(JsonBodyError, match="not JSON"):
        load_json_bounded(b"{not json")
    with pytest.raises(JsonBodyError, match="not JSON"):
        load_json_bounded(b"\xff\xfe\x00")


@pytest.mark.parametrize("depth", [150, 5000, 100_000])
def test_careplan_create_and_validate_answer_400_for_deep_json(depth: int) -> None:
    body = (
        b'{"resourceType": "CarePlan", "status": "draft", "intent": "plan", "extension": '
        + _nested(depth)
        + b"}"
    )
    for version in ("4.0", "5.0"):
        resource, error = validate_resource(body, version)
        assert resource is None and error is not None
        assert error.status_code == 400
        outcome = json.loads(error.body)
        assert outcome["resourceType"] == "OperationOutcome"
        assert "deeper than" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("depth", [150, 5000, 100_000])
def test_process_message_answers_400_for_deep_json(depth: int) -> None:
    body = (
        b'{"resourceType": "Bundle", "type": "message", "id": "'
        + str(uuid4()).encode()
        + b'", "entry": '
        + _nested(depth)
        + b"}"
    )
    out = parse_message_bundle(body)
    assert out.status == 400
    assert "deeper than" in out.body["issue"][0]["diagnostics"]
