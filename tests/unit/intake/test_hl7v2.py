"""HL7 v2 ADT → events and acknowledgements (pure parser, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.planning.intake.hl7v2 import parse_adt, parse_hl7_datetime
from shared.identifiers import PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM
from tests.support.personnummer import ADULT, ADULTS, SAMORDNINGSNUMMER
from tests.unit.intake.messages import (
    CONFORMANCE,
    SNR_AUTHORITY,
    adt,
    adt_bytes,
    bad_check_digit,
    msa,
    segment,
)


def test_public_adt_a03_v28_is_accepted() -> None:
    path = CONFORMANCE / "hl7v2-public" / "ADT-A03-fhir-converter-sample.hl7"
    raw = path.read_bytes()  # binary: the file's segment ends must survive
    out = parse_adt(raw)
    assert out.ack_code == "AA", out.error
    assert msa(out.ack)[1:3] == ["AA", "MSG00001"]
    discharged = out.events[0]
    assert discharged.kind == "discharged"
    assert discharged.source == "hl7v2"
    assert discharged.source_message_id == "MSG00001"
    assert discharged.stay_id == "40007716"  # PV1-19
    assert discharged.occurred_at == parse_hl7_datetime("20150209113419+0110")  # PV1-45
    # no Swedish identifier: the first PID-3 identifier passes through with its assigning authority
    assert discharged.patient.kind == "other"
    assert (discharged.patient.system, discharged.patient.value) == ("urn:oid:2.16.1", "PATID1234")
    # PID-30 = Y: the sample patient died
    assert [e.kind for e in out.events] == ["discharged", "deceased"]


def test_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    out = parse_adt(adt_bytes(control_id="CTRL-42"))
    assert out.ack_code == "AA"
    msh = segment(out.ack, "MSH")
    assert msh is not None
    assert msh[2:6] == ["SIP", "KOMMUN", "PAS", "SU^1.2.752.129.2.1.4.1^ISO"]
    assert msh[8] == "ACK^A03^ACK"
    assert msh[9] != "CTRL-42" and msh[9]
    assert msh[11] == "2.5"
    assert msa(out.ack)[1:3] == ["AA", "CTRL-42"]
    assert segment(out.ack, "ERR") is None


def test_discharge_event_fields() -> None:
    out = parse_adt(adt_bytes(evn_occurred="20240301135500+0100"))
    assert out.ack_code == "AA", out.error
    (ev,) = out.events
    assert ev.kind == "discharged"
    assert ev.patient.system == PERSONNUMMER_SYSTEM and ev.patient.value == ADULT
    assert ev.stay_id == "V12345"
    assert ev.hospital_id == "1.2.752.129.2.1.4.1"
    assert ev.kommun_code == "1480"
    assert ev.primary_care_unit == "SE2321000131-E000000000111"
    assert ev.discharge_disposition == "01"
    assert ev.occurred_at == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)  # PV1-45 wins for a discharge
    assert ev.source_event_code == "ADT^A03"


def test_pv1_36_as_id_in_v23() -> None:
    out = parse_adt(adt_bytes(version="2.3", pv1_36="01"))
    assert out.ack_code == "AA", out.error
    assert out.events[0].discharge_disposition == "01"
    assert segment(out.ack, "MSH")[8] == "ACK^A03"  # 2.3 has no message structure component


def test_pv1_36_as_cwe_in_v27() -> None:
    out = parse_adt(adt_bytes(version="2.7", pv1_36="01^Discharged to home or self care^HL70112"))
    assert out.ack_code == "AA", out.error
    assert out.events[0].discharge_disposition == "01"


def test_expired_disposition_adds_deceased_event() -> None:
    out = parse_adt(adt_bytes(version="2.5", pv1_36="20"))
    assert [e.kind for e in out.events] == ["discharged", "deceased"]


@pytest.mark.parametrize("charset", ["8859/1", None])
def test_iso_8859_1_names_decode(charset: str | None) -> None:
    raw = adt_bytes(name="Öberg^Åsa", charset=charset, encoding="iso8859-1")
    assert "Åsa".encode("iso8859-1") in raw and "Åsa".encode() not in raw
    out = parse_adt(raw)
    assert out.ack_code == "AA", out.error
    assert out.message.segment("PID")[5] == "Öberg^Åsa"
    assert out.message.extract_field("PID", 1, 5, 1, 2, 1) == "Åsa"
    assert "name" not in out.events[0].model_dump()  # events never carry names


def test_utf8_declared_in_msh18() -> None:
    out = parse_adt(adt_bytes(name="Öberg^Åsa", charset="UNICODE UTF-8"))
    assert out.ack_code == "AA", out.error
    assert out.message.extract_field("PID", 1, 5, 1, 1, 1) == "Öberg"
    assert segment(out.ack, "MSH")[17] == "UNICODE UTF-8"


def test_declared_utf8_with_latin1_bytes_is_ae() -> None:
    out = parse_adt(adt_bytes(name="Öberg^Åsa", charset="UNICODE UTF-8", encoding="iso8859-1"))
    assert out.ack_code == "AE"
    assert "MSH-18" in msa(out.ack)[3]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_segment_terminators_tolerated(end: str) -> None:
    out = parse_adt(adt_bytes(segment_end=end))
    assert out.ack_code == "AA", out.error
    assert out.events[0].stay_id == "V12345"


def test_missing_pid3_is_ae_with_reason() -> None:
    out = parse_adt(adt_bytes(pid3=""))
    assert out.ack_code == "AE"
    fields = msa(out.ack)
    assert fields[1:3] == ["AE", "MSG00001"]
    assert "PID-3" in fields[3]
    err = segment(out.ack, "ERR")
    assert err is not None
    assert err[2] == "PID^1^3"
    assert err[3].startswith("101^")
    assert err[4] == "E"
    assert out.events == ()


def test_missing_pid3_in_v23_uses_err1() -> None:
    out = parse_adt(adt_bytes(pid3="", version="2.3"))
    assert out.ack_code == "AE"
    err = segment(out.ack, "ERR")
    assert err is not None and err[1].startswith("PID^1^3^101&")


def test_wrong_check_digit_is_ae() -> None:
    out = parse_adt(adt_bytes(pid3=f"{bad_check_digit(ADULT)}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"))
    assert out.ack_code == "AE"
    assert "check digit" in msa(out.ack)[3]
    assert segment(out.ack, "ERR")[3].startswith("102^")


def test_unlabelled_personnummer_shaped_value_with_bad_check_digit_is_ae() -> None:
    out = parse_adt(adt_bytes(pid3=f"{bad_check_digit(ADULTS[1])}^^^^MR"))
    assert out.ack_code == "AE"
    assert "looks like a personnummer" in msa(out.ack)[3]


def test_unlabelled_valid_personnummer_is_picked_over_local_mrn() -> None:
    out = parse_adt(adt_bytes(pid3=f"MRN77^^^SU^MR~{ADULTS[2]}"))
    assert out.ack_code == "AA", out.error
    assert out.events[0].patient.value == ADULTS[2]
    assert out.events[0].patient.kind == "personnummer"


def test_samordningsnummer_by_oid() -> None:
    out = parse_adt(adt_bytes(pid3=f"{SAMORDNINGSNUMMER}^^^{SNR_AUTHORITY}^PN"))
    assert out.ack_code == "AA", out.error
    assert out.events[0].patient.system == SAMORDNINGSNUMMER_SYSTEM
    assert out.events[0].patient.kind == "samordningsnummer"


def test_personnummer_labelled_as_samordningsnummer_is_ae() -> None:
    out = parse_adt(adt_bytes(pid3=f"{ADULT}^^^{SNR_AUTHORITY}^PN"))
    assert out.ack_code == "AE"
    assert "samordningsnummer" in msa(out.ack)[3]


@pytest.mark.parametrize("bad", ["2024-03-01", "20241301", "yesterday", "20240301250000"])
def test_unparseable_date_is_ae(bad: str) -> None:
    out = parse_adt(adt_bytes(evn_recorded=bad))
    assert out.ack_code == "AE"
    assert "EVN-2" in msa(out.ack)[3]


@pytest.mark.parametrize(
    ("msg_type", "trigger", "code"), [("ADT", "A05", "201"), ("ORU", "R01", "200"), ("ADT", "A04", "201")]
)
def test_unsupported_type_or_trigger_is_ar(msg_type: str, trigger: str, code: str) -> None:
    out = parse_adt(adt_bytes(trigger, msg_type=msg_type, control_id="X9"))
    assert out.ack_code == "AR"
    assert msa(out.ack)[1:3] == ["AR", "X9"]
    assert segment(out.ack, "ERR")[3].startswith(code + "^")
    assert out.events == ()


@pytest.mark.parametrize("version", ["2.2", "2.9", "3.0"])
def test_unsupported_version_is_ar(version: str) -> None:
    out = parse_adt(adt_bytes(version=version))
    assert out.ack_code == "AR"
    assert "version" in msa(out.ack)[3]


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
def test_supported_versions(version: str) -> None:
    assert parse_adt(adt_bytes(version=version)).ack_code == "AA"


def test_garbage_is_ar_without_control_id() -> None:
    out = parse_adt(b"\x00\xffnot hl7 at all")
    assert out.ack_code == "AR"
    assert msa(out.ack)[1:3] == ["AR", ""]
    assert out.control_id is None


def test_a08_with_expected_discharge_is_expected_discharge_changed() -> None:
    out = parse_adt(adt_bytes("A08", pv2_9="20240305120000+0100"))
    assert out.ack_code == "AA", out.error
    (ev,) = out.events
    assert ev.kind == "expected-discharge-changed"
    assert ev.expected_discharge_at == datetime(2024, 3, 5, 11, 0, tzinfo=UTC)


def test_a08_without_pv2_is_corrected() -> None:
    assert parse_adt(adt_bytes("A08")).events[0].kind == "corrected"


@pytest.mark.parametrize(
    ("trigger", "kind", "cancels"),
    [
        ("A01", "admitted", None),
        ("A11", "cancelled", "admitted"),
        ("A13", "cancelled", "discharged"),
        ("A21", "leave-started", None),
        ("A22", "leave-ended", None),
        ("A16", "ready-for-discharge", None),
        ("A25", "ready-revoked", None),
    ],
)
def test_trigger_mapping(trigger: str, kind: str, cancels: str | None) -> None:
    out = parse_adt(adt_bytes(trigger))
    assert out.ack_code == "AA", out.error
    assert out.events[0].kind == kind
    assert out.events[0].cancels == cancels


def test_a16_ready_for_discharge_keeps_the_exact_evn6_time() -> None:
    out = parse_adt(adt_bytes("A16", evn_occurred="20240301093012+0100"))
    assert out.ack_code == "AA", out.error
    (ev,) = out.events
    assert ev.kind == "ready-for-discharge"
    assert ev.ready_for_discharge_at == datetime(2024, 3, 1, 8, 30, 12, tzinfo=UTC)


def test_admit_time_from_pv1_44_and_local_time_default() -> None:
    ev = parse_adt(adt_bytes("A01")).events[0]
    assert ev.occurred_at == datetime(2024, 2, 25, 8, 0, tzinfo=UTC)
    # no offset → Europe/Stockholm (CET in March)
    assert parse_hl7_datetime("202403011400") == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)
    assert parse_hl7_datetime("20240701140000") == datetime(2024, 7, 1, 12, 0, tzinfo=UTC)


def test_missing_visit_number_is_ae() -> None:
    out = parse_adt(adt_bytes(visit=""))
    assert out.ack_code == "AE"
    assert "PV1-19" in msa(out.ack)[3]


def test_missing_control_id_is_ar() -> None:
    out = parse_adt(adt_bytes(control_id=""))
    assert out.ack_code == "AR"
    assert "MSH-10" in msa(out.ack)[3]


def test_mllp_framing_bytes_are_tolerated() -> None:
    assert parse_adt(b"\x0b" + adt_bytes() + b"\x1c\x0d").ack_code == "AA"


def test_ack_escapes_separators_in_reason() -> None:
    out = parse_adt(adt(msg_type="ORU", trigger="R01").encode())
    text = msa(out.ack)[3]
    assert "ORU\\S\\R01" in text
    assert len(msa(out.ack)) == 4


def test_a_line_break_right_after_msh_is_refused_not_a_crash() -> None:
    # found by the property test: "MSH\n|^~\\&|..." has no field separator on the MSH line
    raw = adt_bytes().replace(b"MSH|", b"MSH\n|", 1)
    out = parse_adt(raw)
    assert out.ack_code in ("AE", "AR") and out.ack
