"""The ACK of every HL7 v2 version the listener accepts parses under hl7apy's strict validation.

For each supported version an accepted message (AA), a content error (AE: a wrong check digit) and an
unacceptable one (AR: an unsupported trigger) are answered, and the ACK is read back with hl7apy at
``VALIDATION_LEVEL.STRICT`` against that version's own definitions: segment and field cardinality
(no MSA-3 from 2.7 on, where the field is withdrawn), data types, the ERR layout of the version (ERR-1
up to 2.4; ERR-2/3/4 from 2.5). hl7apy has no 2.7.1 tables: that ACK is checked against 2.7's, whose
ACK, MSA and ERR are the same.
"""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message, parse_segment

from services.planning.intake.hl7v2 import (
    ERR_DATA_TYPE,
    SUPPORTED_VERSIONS,
    ErrorInfo,
    build_ack,
    parse_adt,
    read_header,
)
from tests.support.personnummer import ADULT
from tests.unit.intake.messages import PNR_AUTHORITY, adt_bytes, bad_check_digit, msa, segment

#: the versions hl7apy ships definitions for, and the one it does not (read as its equal)
HL7APY_VERSION = {"2.7.1": "2.7"}


def _cases(version: str) -> dict[str, bytes]:
    return {
        "AA": adt_bytes(version=version),
        "AE": adt_bytes(version=version, pid3=f"{bad_check_digit(ADULT)}^^^{PNR_AUTHORITY}^PN"),
        "AR": adt_bytes("A99", version=version),
    }


def _strict(ack: bytes, version: str, encoding: str = "utf-8") -> Message:
    """Parse and validate the ACK strictly with hl7apy, against the tables of ``version``."""
    text = ack.decode(encoding)
    hl7apy_version = HL7APY_VERSION.get(version, version)
    if hl7apy_version != version:
        text = text.replace(f"|{version}", f"|{hl7apy_version}", 1)
    segments = [s for s in text.split("\r") if s]
    if hl7apy_version == "2.3":
        # 2.3 has no MSH-9.3 (message structure) and hl7apy names the message after MSH-9
        # ("ACK_A03", which 2.3 does not define): build the ACK structure and add each strictly
        # parsed segment to it
        message = Message("ACK", version="2.3", validation_level=VALIDATION_LEVEL.STRICT)
        msh, *rest = (
            parse_segment(s, version="2.3", validation_level=VALIDATION_LEVEL.STRICT) for s in segments
        )
        message.msh = msh  # replaces the MSH hl7apy creates with the message
        for seg in rest:
            message.add(seg)
        assert message.msh.msh_9.value == msh.msh_9.value
    else:
        message = parse_message(
            "\r".join(segments), validation_level=VALIDATION_LEVEL.STRICT, find_groups=False
        )
    assert message.validate() is True
    return message


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_the_ack_is_strictly_valid_for_the_version_it_answers(version: str, code: str) -> None:
    out = parse_adt(_cases(version)[code])
    assert out.ack_code == code, out.error
    msh = segment(out.ack, "MSH")
    assert msh is not None and msh[11] == version  # MSH-12 echoes the version
    fields = msa(out.ack)
    assert fields[1:3] == [code, "MSG00001"]
    err = segment(out.ack, "ERR")
    vt = tuple(int(p) for p in version.split("."))
    if code == "AA":
        assert err is None and len(fields) == 3
    else:
        assert err is not None
        expected = "102" if code == "AE" else "201"
        if vt >= (2, 7):
            assert len(fields) == 3, "MSA-3 is withdrawn from 2.7 on"
        else:
            assert len(fields) == 4 and fields[3]
        if vt >= (2, 5):
            assert err[1] == "" and err[3].startswith(expected + "^") and err[4] == "E"
            assert err[8], "the reason is in ERR-8 (user message)"
        else:
            assert len(err) == 2 and err[1].split("^")[3].startswith(expected + "&")
    message = _strict(out.ack, version)
    assert message.msa.msa_1.value == code


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1", "2.7.1", "2.8"])
@pytest.mark.parametrize(("charset", "encoding"), [("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1")])
def test_an_ack_with_a_character_set_is_valid_too(version: str, charset: str, encoding: str) -> None:
    out = parse_adt(adt_bytes(version=version, charset=charset, encoding=encoding))
    assert out.ack_code == "AA", out.error
    msh = segment(out.ack, "MSH")
    assert msh is not None and msh[17] == charset  # MSH-18 echoed, the ACK in that character set
    _strict(out.ack, version, encoding)


def test_a_reason_with_separators_is_escaped_and_still_valid() -> None:
    for version in ("2.4", "2.6", "2.8.2"):
        out = parse_adt(adt_bytes(version=version, visit=""))  # PV1-19 missing: AE with a reason
        assert out.ack_code == "AE"
        _strict(out.ack, version)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_a_long_reason_still_parses_strictly(version: str) -> None:
    """MSA-3 is an ST (strict parsers refuse more than 199 characters); ERR-8 (TX) keeps 400."""
    header = read_header(adt_bytes(version=version))
    reason = "PID-3 " + "värdet | ^ & ~ \\ är fel; " * 30
    ack = build_ack(header, "AE", ErrorInfo(reason, ERR_DATA_TYPE, "PID", 3))
    segments = {s[:3]: s.split("|") for s in ack.decode("utf-8").split("\r") if s}
    if _version(version) < (2, 7):
        assert len(segments["MSA"][3]) <= 199 and segments["MSA"][3].endswith("...")
    err = segments["ERR"]
    if _version(version) >= (2, 5):
        assert len(err[8]) > 199
    _strict(ack, version)


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
