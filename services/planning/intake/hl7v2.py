"""HL7 v2 ADT (versions 2.3–2.8) → :class:`HospitalEvent`, and the application acknowledgement.

Pure: bytes in, :class:`Hl7Outcome` out (events + the ACK bytes). Never raises on bad input — every
problem becomes an ``AE`` (content wrong) or ``AR`` (message type, trigger, version or header not
acceptable) acknowledgement whose ERR segment (and, before v2.7, MSA-3) says why — laid out for the
version of the message it answers (:func:`build_ack`).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal

from pydantic import ValidationError

from services.planning.intake.hl7fields import Hl7Fields
from shared.clock import STOCKHOLM
from shared.hospital import EventKind, HospitalEvent, PatientIdentifier
from shared.identifiers import (
    PERSONNUMMER_OID,
    SAMORDNINGSNUMMER_OID,
    TWELVE_DIGITS,
    InvalidPersonIdentifier,
    parse_person_identifier,
)
from shared.timestamps import TimeOutOfRange, check_storable

log = logging.getLogger("sip.intake.hl7v2")

AckCode = Literal["AA", "AE", "AR"]

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")

#: trigger → (kind, what a cancel cancels)
TRIGGERS: dict[str, tuple[EventKind, EventKind | None]] = {
    "A01": ("admitted", None),
    "A03": ("discharged", None),
    "A08": ("corrected", None),  # becomes expected-discharge-changed when PV2-9 is given
    "A11": ("cancelled", "admitted"),
    "A13": ("cancelled", "discharged"),
    # LUS over ADT: A16 "pending discharge" carries utskrivningsklar (EVN-6 = the exact time the
    # doctor judged the patient ready), A25 "cancel pending discharge" is the revocation.
    "A16": ("ready-for-discharge", None),
    "A25": ("ready-revoked", None),
    "A21": ("leave-started", None),
    "A22": ("leave-ended", None),
}

#: HL7 table 0112 discharge dispositions that mean the patient died
DEATH_DISPOSITIONS = {"20", "40", "41", "42"}

_PN_OID = PERSONNUMMER_OID.removeprefix("urn:oid:")
_SN_OID = SAMORDNINGSNUMMER_OID.removeprefix("urn:oid:")
_OID = re.compile(r"^[0-2](\.\d+)+$")
_DTM = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?([+-]\d{4})?$")

# HL7 table 0357 (message error condition codes)
ERR_SEGMENT_SEQUENCE = ("100", "Segment sequence error")
ERR_REQUIRED_MISSING = ("101", "Required field missing")
ERR_DATA_TYPE = ("102", "Data type error")
ERR_TABLE_VALUE = ("103", "Table value not found")
ERR_UNSUPPORTED_TYPE = ("200", "Unsupported message type")
ERR_UNSUPPORTED_EVENT = ("201", "Unsupported event code")
ERR_UNSUPPORTED_VERSION = ("203", "Unsupported version id")
ERR_INTERNAL = ("207", "Application internal error")
#: MSA-3 text message (2.3–2.6) is an ST: longer values fail strict parsers (hl7apy: 199). The
#: tables give MSA-3 80 characters, which a few reasons pass; no receiver met enforces that, and from
#: 2.5 the full text is in ERR-8 (TX) as well
MSA_3_LENGTH = 199

CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso8859-1",
    "8859/15": "iso8859-15",
    "ASCII": "ascii",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(2, 10)},
}


@dataclass(frozen=True)
class ErrorInfo:
    text: str
    code: tuple[str, str]
    segment: str = "MSH"
    field: int | None = None


@dataclass(frozen=True)
class Header:
    """What the ACK needs from the incoming MSH, read even when the rest does not parse."""

    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    fields: tuple[str, ...] = ()  # raw MSH fields; fields[n] is MSH-n (fields[0], fields[1] unused)
    charset_label: str = ""
    codec: str = "utf-8"

    def raw(self, n: int) -> str:
        return self.fields[n] if 0 <= n < len(self.fields) else ""

    def component(self, n: int, comp: int = 1) -> str:
        parts = self.raw(n).split(self.encoding_chars[0] if self.encoding_chars else "^")
        return parts[comp - 1].strip() if comp - 1 < len(parts) else ""

    @property
    def control_id(self) -> str | None:
        value = self.component(10)
        return value or None

    @property
    def sender(self) -> str:
        return f"{self.raw(3)}|{self.raw(4)}"

    @property
    def version(self) -> str:
        return self.component(12)

    @property
    def trigger(self) -> str:
        return self.component(9, 2)


@dataclass(frozen=True)
class Hl7Outcome:
    ack_code: AckCode
    ack: bytes
    header: Header
    events: tuple[HospitalEvent, ...] = ()
    error: ErrorInfo | None = None
    message: Hl7Fields | None = None  # the parsed message, when parsing got that far
    text: str | None = None  # the decoded message
    warnings: tuple[str, ...] = field(default=())

    @property
    def control_id(self) -> str | None:
        return self.header.control_id

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def message_type(self) -> str:
        return f"{self.header.component(9, 1)}^{self.header.component(9, 2)}"


class _Reject(Exception):
    def __init__(self, code: AckCode, error: ErrorInfo) -> None:
        super().__init__(error.text)
        self.ack_code = code
        self.error = error


# --------------------------------------------------------------------------- decoding


def _normalise_segments(text: str) -> str:
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(s for s in text.split("\r") if s.strip())


def _strip_envelope(raw: bytes) -> bytes:
    return raw.strip(b"\x0b\x1c\x00 \t\r\n").removeprefix(b"\xef\xbb\xbf")


def read_header(raw: bytes) -> Header:
    """Read the MSH fields byte-wise (ASCII-compatible); never fails, may return an empty header."""
    body = _strip_envelope(raw)
    if not body.startswith(b"MSH") or len(body) < 8:
        return Header()
    first = re.split(rb"[\r\n]", body, maxsplit=1)[0].decode("latin-1")
    if len(first) < 8:  # "MSH" and a line break: no field separator or encoding characters
        return Header()
    sep = first[3]
    parts = first.split(sep)
    enc = parts[1] if len(parts) > 1 else ""
    specials = enc[:4] + sep
    if (
        len(enc) < 4
        or len(set(specials)) != 5
        or not all(c.isprintable() and not c.isalnum() and c != " " and ord(c) < 128 for c in specials)
    ):
        return Header()
    fields = ("MSH", sep, *parts[1:])  # fields[n] is MSH-n
    label = fields[18].split(enc[1])[0].strip() if len(fields) > 18 else ""
    return Header(field_sep=sep, encoding_chars=enc, fields=tuple(fields), charset_label=label)


def decode(raw: bytes, header: Header) -> tuple[str, Header]:
    """Decode by MSH-18; without MSH-18, UTF-8 if the bytes are valid UTF-8, else ISO-8859-1."""
    body = _strip_envelope(raw)
    label = header.charset_label.upper()
    if not label:
        try:
            return body.decode("utf-8"), _with_codec(header, "utf-8")
        except UnicodeDecodeError:
            return body.decode("iso8859-1"), _with_codec(header, "iso8859-1")
    codec = CHARSETS.get(label)
    if codec is None:
        raise _Reject(
            "AE",
            ErrorInfo(
                f"MSH-18 character set {header.charset_label!r} is not supported", ERR_TABLE_VALUE, "MSH", 18
            ),
        )
    try:
        return body.decode(codec), _with_codec(header, codec)
    except UnicodeDecodeError as exc:
        raise _Reject(
            "AE",
            ErrorInfo(
                f"message bytes are not valid {header.charset_label} as declared in MSH-18 "
                f"(byte {exc.start})",
                ERR_DATA_TYPE,
                "MSH",
                18,
            ),
        ) from None


def _with_codec(header: Header, codec: str) -> Header:
    return Header(header.field_sep, header.encoding_chars, header.fields, header.charset_label, codec)


# --------------------------------------------------------------------------- field access


def _get(m: Hl7Fields, seg: str, fld: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    try:
        value = m.extract_field(seg, 1, fld, rep, comp, sub)
    except Exception:
        return ""
    value = (value or "").strip()
    return "" if value == '""' else value


def _repetitions(m: Hl7Fields, seg: str, fld: int, limit: int = 20) -> int:
    count = 0
    for rep in range(1, limit + 1):
        try:
            m.extract_field(seg, 1, fld, rep, 1, 1)
        except Exception:
            break
        count = rep
    return count


def parse_hl7_datetime(value: str, default_tz: tzinfo = STOCKHOLM) -> datetime:
    """HL7 DTM/TS ``YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ]`` → aware datetime (local time if no offset).

    A ValueError when it is not one, or is a time the suite cannot store (:mod:`shared.timestamps`)."""
    m = _DTM.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])")
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    tz: tzinfo = default_tz
    if off:
        sign = 1 if off[0] == "+" else -1
        hours, minutes = int(off[1:3]), int(off[3:5])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{value!r} has an impossible UTC offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        parsed = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0), micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a real date/time: {exc}") from None
    try:
        return check_storable(parsed)  # a time the stores cannot hold is refused here, not downstream
    except TimeOutOfRange as exc:
        raise ValueError(f"{value!r}: {exc}") from None


# --------------------------------------------------------------------------- parsing


def parse_adt(raw: bytes, *, default_tz: tzinfo = STOCKHOLM, now: datetime | None = None) -> Hl7Outcome:
    """Parse one HL7 v2 message (without MLLP framing) into events and build its ACK."""
    header = read_header(raw)
    text: str | None = None
    message: Hl7Fields | None = None
    try:
        if not header.fields:
            raise _Reject(
                "AR",
                ErrorInfo(
                    "not an HL7 v2 message: it does not start with a valid MSH segment",
                    ERR_SEGMENT_SEQUENCE,
                    "MSH",
                    1,
                ),
            )
        text, header = decode(raw, header)
        text = _normalise_segments(text)
        _check_envelope(header)
        try:
            message = Hl7Fields(text)
        except Exception as exc:
            raise _Reject("AE", ErrorInfo(f"message could not be parsed: {exc}", ERR_DATA_TYPE)) from None
        events = _events(message, header, default_tz)
    except _Reject as rej:
        return Hl7Outcome(
            rej.ack_code,
            build_ack(header, rej.ack_code, rej.error, now=now),
            header,
            error=rej.error,
            message=message,
            text=text,
        )
    except Exception as exc:  # a bug must not take the listener down; the sender may resend
        log.exception("unexpected error while parsing an HL7 message")
        err = ErrorInfo(f"internal error while reading the message ({type(exc).__name__})", ERR_INTERNAL)
        return Hl7Outcome(
            "AE", build_ack(header, "AE", err, now=now), header, error=err, message=message, text=text
        )
    return Hl7Outcome(
        "AA", build_ack(header, "AA", None, now=now), header, events=events, message=message, text=text
    )


def _check_envelope(header: Header) -> None:
    msg_type, trigger = header.component(9, 1), header.component(9, 2)
    if not msg_type:
        raise _Reject("AR", ErrorInfo("MSH-9 message type is missing", ERR_REQUIRED_MISSING, "MSH", 9))
    if msg_type != "ADT":
        raise _Reject(
            "AR",
            ErrorInfo(
                f"message type {msg_type}^{trigger} is not supported; only ADT ({', '.join(TRIGGERS)})",
                ERR_UNSUPPORTED_TYPE,
                "MSH",
                9,
            ),
        )
    if trigger not in TRIGGERS:
        raise _Reject(
            "AR",
            ErrorInfo(
                f"trigger event ADT^{trigger} is not supported; supported: {', '.join(TRIGGERS)}",
                ERR_UNSUPPORTED_EVENT,
                "MSH",
                9,
            ),
        )
    if header.version not in SUPPORTED_VERSIONS:
        raise _Reject(
            "AR",
            ErrorInfo(
                f"HL7 version {header.version!r} is not supported (2.3–2.8)",
                ERR_UNSUPPORTED_VERSION,
                "MSH",
                12,
            ),
        )
    if not header.control_id:
        raise _Reject(
            "AR", ErrorInfo("MSH-10 message control id is missing", ERR_REQUIRED_MISSING, "MSH", 10)
        )


def _time(m: Hl7Fields, seg: str, fld: int, tz: tzinfo) -> datetime | None:
    value = _get(m, seg, fld)
    if not value:
        return None
    try:
        return parse_hl7_datetime(value, tz)
    except ValueError as exc:
        raise _Reject("AE", ErrorInfo(f"{seg}-{fld}: {exc}", ERR_DATA_TYPE, seg, fld)) from None


def _events(m: Hl7Fields, header: Header, tz: tzinfo) -> tuple[HospitalEvent, ...]:
    trigger = header.trigger
    kind, cancels = TRIGGERS[trigger]
    if not m.has_segment("PID"):
        raise _Reject("AE", ErrorInfo("PID segment is missing", ERR_REQUIRED_MISSING, "PID", None))
    patient = _patient_identifier(m)
    stay_id = _get(m, "PV1", 19) or _get(m, "PID", 18)
    if not stay_id:
        raise _Reject(
            "AE",
            ErrorInfo(
                "PV1-19 visit number is missing (no stay id; PID-18 is empty too)",
                ERR_REQUIRED_MISSING,
                "PV1",
                19,
            ),
        )

    msh_time = _time(m, "MSH", 7, tz)
    recorded = _time(m, "EVN", 2, tz)
    evn_occurred = _time(m, "EVN", 6, tz)
    admit_time = _time(m, "PV1", 44, tz)
    discharge_time = _time(m, "PV1", 45, tz)
    expected_discharge = _time(m, "PV2", 9, tz)
    death_time = _time(m, "PID", 29, tz)
    general = evn_occurred or recorded or msh_time
    if kind == "admitted":
        occurred = admit_time or general
    elif kind == "discharged":
        occurred = discharge_time or general
    else:
        occurred = general
    if occurred is None:
        raise _Reject(
            "AE",
            ErrorInfo("no event time: EVN-6, EVN-2 and MSH-7 are all empty", ERR_REQUIRED_MISSING, "EVN", 2),
        )
    if trigger == "A08" and expected_discharge is not None:
        kind = "expected-discharge-changed"

    disposition = _get(m, "PV1", 36) or None  # ID (2.3), IS (2.5), CWE (2.7+): the code is component 1
    hospital = header.component(4, 2) or header.component(4, 1) or header.component(3, 1) or None
    common: dict[str, Any] = {
        "source": "hl7v2",
        "source_message_id": header.control_id,
        "source_event_code": f"ADT^{trigger}",
        "stay_id": stay_id,
        "hospital_id": hospital,
        "patient": patient,
        "kommun_code": _kommun(m),
        "primary_care_unit": _primary_care(m),
    }
    try:
        events = [
            HospitalEvent(
                **common,
                kind=kind,
                occurred_at=occurred,
                expected_discharge_at=expected_discharge,
                discharge_disposition=disposition if kind == "discharged" else None,
                cancels=cancels,
            )
        ]
        died = _get(m, "PID", 30).upper() == "Y" or (
            kind == "discharged" and disposition in DEATH_DISPOSITIONS
        )
        if died and trigger in ("A03", "A08"):
            events.append(HospitalEvent(**common, kind="deceased", occurred_at=death_time or occurred))
    except ValidationError as exc:
        seg, fld = _FIELD_OF.get(
            str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else "", ("MSH", None)
        )
        raise _Reject(
            "AE", ErrorInfo(f"message content is invalid: {_short(exc)}", ERR_DATA_TYPE, seg, fld)
        ) from None
    return tuple(events)


#: the HL7 v2 field each HospitalEvent field is read from (for the ERR segment of a refusal)
_FIELD_OF: dict[str, tuple[str, int | None]] = {
    "source_message_id": ("MSH", 10),
    "hospital_id": ("MSH", 4),
    "stay_id": ("PV1", 19),
    "patient": ("PID", 3),
    "kommun_code": ("PID", 11),
    "primary_care_unit": ("PD1", 3),
    "discharge_disposition": ("PV1", 36),
}


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:3])


def _kommun(m: Hl7Fields) -> str | None:
    for value in (_get(m, "PID", 11, 1, 9), _get(m, "PID", 12)):
        if re.fullmatch(r"\d{4}", value):
            return value
    return None


def _primary_care(m: Hl7Fields) -> str | None:
    if not m.has_segment("PD1"):
        return None
    return _get(m, "PD1", 3, 1, 10) or _get(m, "PD1", 3, 1, 3) or _get(m, "PD1", 3, 1, 1) or None


def _patient_identifier(m: Hl7Fields) -> PatientIdentifier:
    reps = _repetitions(m, "PID", 3)
    candidates: list[tuple[int, PatientIdentifier]] = []
    for rep in range(1, reps + 1):
        value = _get(m, "PID", 3, rep, 1)
        if not value:
            continue
        namespace = _get(m, "PID", 3, rep, 4, 1)
        universal = _get(m, "PID", 3, rep, 4, 2).removeprefix("urn:oid:")
        type_code = _get(m, "PID", 3, rep, 5).upper()
        oid = universal if _OID.match(universal) else (namespace if _OID.match(namespace) else "")
        where = f"PID-3 repetition {rep}"
        if oid in (_PN_OID, _SN_OID) or type_code == "NNSWE" or _looks_like_pnr(value):
            labelled = oid in (_PN_OID, _SN_OID) or type_code == "NNSWE"
            try:
                pin = parse_person_identifier(value)
            except InvalidPersonIdentifier as exc:
                what = {
                    "": "value looks like a personnummer",
                    _PN_OID: "personnummer",
                    _SN_OID: "samordningsnummer",
                }.get(oid, "Swedish national identifier")
                raise _Reject(
                    "AE", ErrorInfo(f"{where}: invalid {what}: {exc}", ERR_DATA_TYPE, "PID", 3)
                ) from None
            expected = {_PN_OID: "personnummer", _SN_OID: "samordningsnummer"}.get(oid)
            if expected and pin.kind != expected:
                raise _Reject(
                    "AE",
                    ErrorInfo(
                        f"{where}: value is a {pin.kind} but the assigning authority says {expected}",
                        ERR_DATA_TYPE,
                        "PID",
                        3,
                    ),
                )
            candidates.append((0 if labelled else 1, PatientIdentifier(system=pin.system, value=pin.value)))
            continue
        if oid:
            system = f"urn:oid:{oid}"
        elif namespace:
            system = f"urn:hl7v2:assigning-authority:{namespace}"
        else:
            system = f"urn:hl7v2:identifier-type:{type_code or 'unknown'}"
        try:
            candidates.append((2, PatientIdentifier(system=system, value=value)))
        except ValidationError as exc:
            raise _Reject(
                "AE", ErrorInfo(f"{where}: {exc.errors()[0]['msg']}", ERR_DATA_TYPE, "PID", 3)
            ) from None
    if not candidates:
        raise _Reject(
            "AE",
            ErrorInfo("PID-3 patient identifier list is missing or empty", ERR_REQUIRED_MISSING, "PID", 3),
        )
    return min(candidates, key=lambda c: c[0])[1]


def _looks_like_pnr(value: str) -> bool:
    """Twelve digits whose first eight are a date (or a samordningsnummer date, day + 60)."""
    m = TWELVE_DIGITS.match(value)
    if not m:
        return False
    d = m.group(1)
    year, month, day = int(d[:4]), int(d[4:6]), int(d[6:8])
    if day > 60:
        day -= 60
    return 1850 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31


# --------------------------------------------------------------------------- acknowledgements


def _escape(text: str, sep: str, enc: str) -> str:
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((sep, "F"), (comp, "S"), (rep, "R"), (sub, "T")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5)


def build_ack(
    header: Header, code: AckCode, error: ErrorInfo | None, *, now: datetime | None = None
) -> bytes:
    """An original-mode ACK: sender/receiver swapped, MSA-2 = incoming MSH-10, ERR when rejected."""
    if not header.fields:
        header = Header(fields=("MSH", "|", "^~\\&"))
    sep, enc = header.field_sep, header.encoding_chars
    comp, sub = enc[0], enc[3]
    version = ack_version(header.version)
    vt = _version_tuple(version)
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    trigger = header.trigger
    msg_type = (
        f"ACK{comp}{trigger}{comp}ACK"
        if trigger and vt >= (2, 3, 1)
        else (f"ACK{comp}{trigger}" if trigger else "ACK")
    )
    processing = header.component(11) or "P"
    msh = [
        "MSH",
        enc,
        header.raw(5),
        header.raw(6),
        header.raw(3),
        header.raw(4),
        stamp,
        "",
        msg_type,
        uuid.uuid4().hex[:20],
        processing,
        version,
    ]
    if header.charset_label:
        msh += ["", "", "", "", "", header.raw(18)]
    control = _escape(header.control_id or "", sep, enc)
    msa = ["MSA", code, control]
    segments = []
    if error is not None:
        text = _escape(error.text[:400], sep, enc)
        if vt < (2, 7):  # MSA-3 text message (ST): withdrawn in 2.7, where ERR carries the text
            msa.append(_fit(error.text, MSA_3_LENGTH, sep, enc))
        if vt >= (2, 5):
            segments.append(sep.join(_err_from_2_5(error, text, comp)))
        else:
            segments.append(sep.join(["ERR", _err_1(error, comp, sub)]))
    lines = [sep.join(msh), sep.join(msa), *segments]
    return ("\r".join(lines) + "\r").encode(header.codec, errors="replace")


def _fit(text: str, length: int, sep: str, enc: str) -> str:
    """``text`` escaped and cut so that the escaped value is at most ``length`` characters (never in
    the middle of an escape sequence); a cut text ends in "..." (ASCII: the ACK's character set may
    have no ellipsis)."""
    escaped = _escape(text, sep, enc)
    if len(escaped) <= length:
        return escaped
    cut = text[: length - 3]
    while len(_escape(cut, sep, enc)) > length - 3:
        cut = cut[:-1]
    return _escape(cut, sep, enc) + "..."


def ack_version(version: str) -> str:
    """MSH-12 of the ACK: the version of the message it answers, whose layout the ACK follows. A
    version the listener does not read (2.2, 2.9, 3.0, empty) is refused with AR in 2.5, a version
    every v2 receiver of that era reads (with MSA-3 and the ERR segment of 2.5)."""
    return version if version in SUPPORTED_VERSIONS else "2.5"


def _err_1(error: ErrorInfo, comp: str, sub: str) -> str:
    """ERR-1 error code and location (2.1–2.4, type CM/ELD): segment ^ sequence ^ field ^ code (CE,
    as subcomponents: table 0357 code & text & HL70357)."""
    code = sub.join([error.code[0], error.code[1], "HL70357"])
    return comp.join([error.segment, "1", str(error.field or ""), code])


def _err_from_2_5(error: ErrorInfo, text: str, comp: str) -> list[str]:
    """The ERR segment from 2.5 on: ERR-1 (withdrawn in 2.7) empty; ERR-2 error location (ERL:
    segment ^ sequence ^ field); ERR-3 HL7 error code (CWE, table 0357); ERR-4 severity E; ERR-8 the
    user message (the text MSA-3 carried before 2.7)."""
    location = [error.segment, "1"] + ([str(error.field)] if error.field else [])
    code = comp.join([error.code[0], error.code[1], "HL70357"])
    return ["ERR", "", comp.join(location), code, "E", "", "", "", text]


def ack_code_of(ack: bytes) -> str | None:
    """The MSA-1 code of an ACK (helper for tests and logs)."""
    for seg in re.split(rb"[\r\n]+", ack):
        if seg.startswith(b"MSA") and len(seg) > 4:
            return seg[4:].split(seg[3:4])[0].decode("latin-1")
    return None
