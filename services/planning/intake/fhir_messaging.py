"""FHIR R4 message bundles → :class:`HospitalEvent`.

Two published notification standards are understood:

- **MedCom HospitalNotification** (DK): ``MessageHeader.eventCoding`` is always
  ``hospital-notification-message``; the real event is the ``Provenance.activity`` code of the
  Provenance whose target is *this* MessageHeader (the bundle also carries the Provenances of the
  stay's earlier messages). ``revise-*`` / ``cancel-*`` codes become ``corrected`` / ``cancelled``;
  the Provenance entity (role revision/removal) names the earlier message.
- **Da Vinci Unsolicited Notifications** (US): ``MessageHeader.eventCoding`` from
  ``.../davinci-alerts/CodeSystem/notification-event``; ``focus`` → Encounter.

An accepted MedCom message is answered with MedCom's acknowledgement message (:mod:`.medcom`), any
other with FHIR's response message (:func:`response_bundle`).

Pure: :func:`parse_message_bundle` returns events or an R4 ``OperationOutcome`` (a dict) saying why
the message is refused. It never raises on bad input.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from typing import Any

from pydantic import ValidationError

from shared.clock import STOCKHOLM
from shared.fhir import JsonBodyError, load_json_bounded
from shared.hospital import SWEDISH_SYSTEMS, EventKind, HospitalEvent, PatientIdentifier
from shared.identifiers import HSA_SYSTEM, InvalidPersonIdentifier
from shared.timestamps import TimeOutOfRange, check_storable

from . import medcom

log = logging.getLogger("sip.intake.fhir")

MEDCOM_EVENT = "hospital-notification-message"
MEDCOM_ACTIVITY_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-activityCodes"
DAVINCI_EVENT_SYSTEM = "http://hl7.org/fhir/us/davinci-alerts/CodeSystem/notification-event"
SOR_SYSTEM = "urn:oid:1.2.208.176.1.1"  # Danish SOR organisation codes
CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"  # Danish CPR: passed through as "other"

#: MedCom activity code stems → kind (the ``revise-``/``cancel-`` prefixes are handled separately)
MEDCOM_STEMS: tuple[tuple[str, EventKind], ...] = (
    ("admit-", "admitted"),
    ("discharge-", "discharged"),
    ("start-leave-", "leave-started"),
    ("end-leave-", "leave-ended"),
    ("deceased", "deceased"),
)

DAVINCI_EVENTS: dict[str, EventKind] = {
    "notification-admit": "admitted",
    "notification-discharge": "discharged",
    # SIP.md: a transfer is a new stay; the original code stays in source_event_code
    "notification-transfer": "admitted",
}

#: where the answers' fullUrls point when the service's public base is not given
DEFAULT_FHIR_BASE = "http://127.0.0.1:8080/fhir"
_RESPONSE_NS = uuid.UUID("5d0f3c1e-8a3b-4c7e-b2a4-91e0c6f4d2a7")

#: Encounter.hospitalization.dischargeDisposition codes that mean the patient died
DEATH_DISPOSITIONS = {"exp", "20", "40", "41", "42"}


@dataclass(frozen=True)
class FhirOutcome:
    status: int  # HTTP status to answer with
    body: dict[str, Any]  # a response message Bundle (accepted) or an OperationOutcome (refused)
    events: tuple[HospitalEvent, ...] = ()
    message_id: str | None = None  # MessageHeader.id (Bundle.id when absent): the idempotency key
    sender: str = ""  # MessageHeader.source.endpoint

    @property
    def accepted(self) -> bool:
        return self.status < 300

    @property
    def outcome_code(self) -> str:
        return "ok" if self.accepted else "fatal-error"


def medcom_kind(activity_code: str) -> tuple[EventKind, EventKind | None]:
    """``(kind, base)``: base is what a ``cancel-*`` cancels / a ``revise-*`` corrects."""
    code = activity_code.strip()
    prefix: EventKind | None = None
    if code.startswith("cancel-"):
        prefix, code = "cancelled", code[len("cancel-") :]
    elif code.startswith("revise-"):
        prefix, code = "corrected", code[len("revise-") :]
    for stem, kind in MEDCOM_STEMS:
        if code.startswith(stem):
            return (prefix, kind) if prefix else (kind, None)
    raise _Refuse(
        f"Provenance.activity code {activity_code!r} is not a known MedCom hospital-notification activity",
        code="code-invalid",
    )


def operation_outcome(
    diagnostics: str, code: str = "invalid", severity: str = "error", expression: list[str] | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class _Refuse(Exception):
    def __init__(
        self,
        diagnostics: str,
        *,
        status: int = 422,
        code: str = "invalid",
        expression: list[str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.expression = status, code, expression


_warm = False


def warm_up() -> None:
    """Import and exercise the R4B models once (≈ 0.1–0.3 s) so the first message is not slow."""
    global _warm
    if not _warm:
        from fhir.resources.R4B.bundle import Bundle

        Bundle.model_validate({"resourceType": "Bundle", "type": "message"})
        _warm = True


def parse_message_bundle(
    raw: bytes | str,
    *,
    default_tz: tzinfo = STOCKHOLM,
    now: datetime | None = None,
    fhir_base: str = DEFAULT_FHIR_BASE,
) -> FhirOutcome:
    """Read one message Bundle. Accepted: a MedCom HospitalNotification is answered with MedCom's
    acknowledgement message (:mod:`.medcom`), any other message with FHIR's response message
    (:func:`response_bundle`); ``now`` stamps the answer, ``fhir_base`` makes its ``fullUrl``s
    absolute. Refused: an OperationOutcome (HTTP 400/422)."""
    message_id: str | None = None
    sender = ""
    try:
        doc = _load(raw)
        message_id, sender = _envelope_ids(doc)
        _validate_r4(raw if isinstance(raw, (bytes, str)) else json.dumps(doc))
        events = _events(doc, message_id or "", default_tz)
    except _Refuse as ref:
        return FhirOutcome(
            ref.status,
            operation_outcome(str(ref), ref.code, expression=ref.expression),
            message_id=message_id,
            sender=sender,
        )
    except Exception as exc:  # never let a malformed message take the endpoint down
        log.exception("unexpected error while reading a FHIR message")
        return FhirOutcome(
            422,
            operation_outcome(f"message could not be processed ({type(exc).__name__})", "processing"),
            message_id=message_id,
            sender=sender,
        )
    at = now or datetime.now(UTC)
    if medcom.is_hospital_notification(doc):
        answer = medcom.acknowledgement(doc, code="ok", at=at, fhir_base=fhir_base)
    else:
        answer = response_bundle(doc, message_id or "", at=at, fhir_base=fhir_base)
    return FhirOutcome(200, answer, events, message_id, sender)


def response_bundle(
    doc: dict[str, Any], message_id: str, *, at: datetime | None = None, fhir_base: str = DEFAULT_FHIR_BASE
) -> dict[str, Any]:
    """The FHIR messaging response (MessageHeader.response.code = ok): a message Bundle with an id and
    a timestamp whose MessageHeader (with an id) names the request's MessageHeader.id. The ids are
    derived from that id: the same message always gets the same answer."""
    header = _message_header(doc)
    bundle_id = str(uuid.uuid5(_RESPONSE_NS, f"{message_id}|bundle"))
    header_id = str(uuid.uuid5(_RESPONSE_NS, f"{message_id}|header"))
    stamp = (at or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "message",
        "timestamp": stamp,
        "entry": [
            {
                "fullUrl": f"{fhir_base.rstrip('/')}/MessageHeader/{header_id}",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": header.get("eventCoding") or {},
                    "source": {"endpoint": medcom.OWN_ENDPOINT, "software": "sip-suite planning"},
                    "response": {"identifier": message_id, "code": "ok"},
                },
            }
        ],
    }


# --------------------------------------------------------------------------- envelope


def _load(raw: bytes | str) -> dict[str, Any]:
    try:
        doc = load_json_bounded(raw)
    except JsonBodyError as exc:
        raise _Refuse(str(exc), status=400, code="structure") from None
    if not isinstance(doc, dict):
        raise _Refuse("body is not a JSON object", status=400, code="structure")
    if doc.get("resourceType") != "Bundle":
        raise _Refuse(
            f"expected a Bundle, got resourceType {str(doc.get('resourceType'))[:60]!r}",
            status=400,
            code="structure",
            expression=["Bundle"],
        )
    if doc.get("type") != "message":
        raise _Refuse(
            f"Bundle.type must be 'message', got {str(doc.get('type'))[:60]!r}",
            code="invalid",
            expression=["Bundle.type"],
        )
    return doc


def _entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    entries = doc.get("entry")
    if not isinstance(entries, list):
        return []
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def _message_header(doc: dict[str, Any]) -> dict[str, Any]:
    resources = _entries(doc)
    if not resources or resources[0].get("resourceType") != "MessageHeader":
        return {}
    return resources[0]


def _envelope_ids(doc: dict[str, Any]) -> tuple[str | None, str]:
    header = _message_header(doc)
    mid = header.get("id") if isinstance(header.get("id"), str) else None
    if not mid and isinstance(doc.get("id"), str):
        mid = doc["id"]
    source: Any = header.get("source") if isinstance(header.get("source"), dict) else {}
    endpoint = source.get("endpoint") if isinstance(source.get("endpoint"), str) else ""
    return (mid or None), endpoint


def _validate_r4(raw: bytes | str) -> None:
    from fhir.resources.R4B.bundle import Bundle

    try:
        Bundle.model_validate_json(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:8]:
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {err['msg']}")
        more = f" (+{exc.error_count() - 8} more)" if exc.error_count() > 8 else ""
        raise _Refuse(
            "Bundle is not valid FHIR R4: " + "; ".join(problems) + more, code="structure"
        ) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise _Refuse(f"Bundle is not valid FHIR R4: {str(exc)[:300]}", code="structure") from None


# --------------------------------------------------------------------------- content


class _Index:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.by_ref: dict[str, dict[str, Any]] = {}
        self.resources = _entries(doc)
        entries: Any = doc.get("entry") if isinstance(doc.get("entry"), list) else []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                continue
            res = entry["resource"]
            if isinstance(entry.get("fullUrl"), str):
                self.by_ref[entry["fullUrl"]] = res
            if isinstance(res.get("id"), str):
                self.by_ref[f"{res.get('resourceType')}/{res['id']}"] = res

    def resolve(self, ref: Any, expected: str | None = None) -> dict[str, Any] | None:
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            return None
        target = ref["reference"]
        res = self.by_ref.get(target)
        if res is None:  # absolute URLs: match on the Type/id tail
            tail = "/".join(target.rstrip("/").split("/")[-2:])
            res = self.by_ref.get(tail)
        if res is not None and expected and res.get("resourceType") != expected:
            return None
        return res

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r.get("resourceType") == rtype]


def _parse_dt(value: Any, where: str, tz: tzinfo) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = datetime.combine(datetime.fromisoformat(value).date(), time(0), tz)
            return _storable(day, value, where)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Refuse(f"{where}: {value!r} is not a FHIR dateTime", expression=[where]) from None
    if parsed.tzinfo is None:
        raise _Refuse(f"{where}: {value!r} has a time but no timezone", expression=[where])
    return _storable(parsed, value, where)


def _storable(parsed: datetime, value: str, where: str) -> datetime:
    """A time the suite cannot store is refused here, at the door, not by the stay handler later."""
    try:
        return check_storable(parsed)
    except TimeOutOfRange as exc:
        raise _Refuse(f"{where}: {value[:64]!r}: {exc}", status=400, expression=[where]) from None


def _codes(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    codings: Any = concept.get("coding") if isinstance(concept.get("coding"), list) else []
    return [(str(c.get("system") or ""), str(c.get("code") or "")) for c in codings if isinstance(c, dict)]


def _ref_id(ref: Any) -> str | None:
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        return ref["reference"].rstrip("/").split("/")[-1] or None
    return None


def _events(doc: dict[str, Any], message_id: str, tz: tzinfo) -> tuple[HospitalEvent, ...]:
    idx = _Index(doc)
    header = _message_header(doc)
    if not header:
        raise _Refuse(
            "the first entry of a message Bundle must be a MessageHeader",
            code="structure",
            expression=["Bundle.entry[0]"],
        )
    event: Any = header.get("eventCoding") if isinstance(header.get("eventCoding"), dict) else {}
    event_code = str(event.get("code") or "")
    event_system = str(event.get("system") or "")
    encounters = [idx.resolve(f, "Encounter") for f in header.get("focus") or [] if isinstance(f, dict)]
    encounter = next((e for e in encounters if e), None)
    if encounter is None:
        raise _Refuse(
            "MessageHeader.focus does not reference an Encounter in the Bundle",
            expression=["MessageHeader.focus"],
        )

    if event_code == MEDCOM_EVENT:
        provenance = _current_provenance(idx, header)
        activity = [
            c for s, c in _codes(provenance.get("activity")) if c and (s == MEDCOM_ACTIVITY_SYSTEM or not s)
        ]
        if not activity:
            raise _Refuse(
                "Provenance.activity has no MedCom activity code", expression=["Provenance.activity"]
            )
        kind, base = medcom_kind(activity[0])
        event_code = activity[0]
        occurred = _parse_dt(
            provenance.get("occurredDateTime"), "Provenance.occurredDateTime", tz
        ) or _parse_dt(provenance.get("recorded"), "Provenance.recorded", tz)
        earlier = {
            str(ent.get("role")): _ref_id(ent.get("what"))
            for ent in provenance.get("entity") or []
            if isinstance(ent, dict)
        }
        cancels_msg = earlier.get("removal") if kind == "cancelled" else None
        corrects_msg = earlier.get("revision") if kind == "corrected" else None
    elif event_code in DAVINCI_EVENTS and (not event_system or event_system == DAVINCI_EVENT_SYSTEM):
        kind, base = DAVINCI_EVENTS[event_code], None
        occurred, cancels_msg, corrects_msg = None, None, None
    else:
        raise _Refuse(
            f"message event {event_system}|{event_code} is not a supported hospital notification",
            code="not-supported",
            expression=["MessageHeader.eventCoding"],
        )

    period: Any = encounter.get("period") if isinstance(encounter.get("period"), dict) else {}
    start = _parse_dt(period.get("start"), "Encounter.period.start", tz)
    end = _parse_dt(period.get("end"), "Encounter.period.end", tz)
    if kind == "admitted" and start is not None:
        occurred = start
    elif kind == "discharged" and end is not None:
        occurred = end
    occurred = (
        occurred
        or _parse_dt(header.get("timestamp"), "MessageHeader.timestamp", tz)
        or _parse_dt(doc.get("timestamp"), "Bundle.timestamp", tz)
    )
    if occurred is None:
        raise _Refuse(
            "no event time: Provenance.occurred, Encounter.period and Bundle.timestamp are empty",
            code="required",
            expression=["Bundle.timestamp"],
        )

    patient = idx.resolve(encounter.get("subject"), "Patient")
    if patient is None:
        patients = idx.of_type("Patient")
        patient = patients[0] if len(patients) == 1 else None
    if patient is None:
        raise _Refuse(
            "Encounter.subject does not reference a Patient in the Bundle",
            code="required",
            expression=["Encounter.subject"],
        )
    hosp: Any = encounter.get("hospitalization") if isinstance(encounter.get("hospitalization"), dict) else {}
    disposition = next((c for _, c in _codes(hosp.get("dischargeDisposition")) if c), None)
    common: dict[str, Any] = {
        "source": "fhir",
        "source_message_id": message_id,
        "source_event_code": event_code,
        "stay_id": _stay_id(encounter),
        "hospital_id": _hospital_id(idx, header, encounter),
        "patient": _patient_identifier(patient),
        "kommun_code": _kommun(patient),
        "primary_care_unit": _primary_care(idx, patient),
    }
    try:
        events = [
            HospitalEvent(
                **common,
                kind=kind,
                occurred_at=occurred,
                discharge_disposition=disposition if kind == "discharged" else None,
                cancels=base if kind == "cancelled" else None,
                cancels_message_id=cancels_msg,
                corrects=base if kind == "corrected" else None,
                corrects_message_id=corrects_msg,
            )
        ]
        died_at = _parse_dt(patient.get("deceasedDateTime"), "Patient.deceasedDateTime", tz)
        died = (
            patient.get("deceasedBoolean") is True
            or died_at is not None
            or (disposition is not None and disposition.lower() in DEATH_DISPOSITIONS)
        )
        if died and kind not in ("cancelled", "deceased"):
            events.append(HospitalEvent(**common, kind="deceased", occurred_at=died_at or end or occurred))
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:3])
        loc = exc.errors()[0]["loc"]
        element = _ELEMENT_OF.get(str(loc[0]) if loc else "")
        raise _Refuse(
            f"message content is invalid: {msg}", expression=[element] if element else None
        ) from None
    return tuple(events)


#: the FHIR element each HospitalEvent field is read from (for the OperationOutcome of a refusal)
_ELEMENT_OF = {
    "source_message_id": "MessageHeader.id",
    "hospital_id": "MessageHeader.sender",
    "stay_id": "Encounter.identifier",
    "patient": "Patient.identifier",
    "kommun_code": "Patient.address.district",
    "primary_care_unit": "Patient.generalPractitioner",
    "discharge_disposition": "Encounter.hospitalization.dischargeDisposition",
}


def _current_provenance(idx: _Index, header: dict[str, Any]) -> dict[str, Any]:
    """The Provenance whose target is this MessageHeader (the others describe earlier messages)."""
    hid = header.get("id")
    wanted = {f"MessageHeader/{hid}"}
    matches = []
    for prov in idx.of_type("Provenance"):
        for target in prov.get("target") or []:
            ref = target.get("reference") if isinstance(target, dict) else None
            if isinstance(ref, str) and (ref in wanted or ref.endswith(f"/MessageHeader/{hid}")):
                matches.append(prov)
                break
    if not matches:
        raise _Refuse(
            f"no Provenance targets the MessageHeader ({hid}); the event cannot be determined",
            expression=["Provenance.target"],
        )
    if len(matches) > 1:
        codes = {c for p in matches for _, c in _codes(p.get("activity"))}
        if len(codes) > 1:
            raise _Refuse(
                f"several Provenances target this MessageHeader with different activities "
                f"({', '.join(sorted(codes))})",
                expression=["Provenance.target"],
            )
    return matches[0]


def _stay_id(encounter: dict[str, Any]) -> str:
    for eoc in encounter.get("episodeOfCare") or []:
        ident = eoc.get("identifier") if isinstance(eoc, dict) else None
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    for ident in encounter.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    return f"Encounter/{encounter.get('id')}"


def _org_identifier(org: dict[str, Any] | None) -> str | None:
    if not org:
        return None
    idents = [i for i in org.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    for system in (HSA_SYSTEM, SOR_SYSTEM):
        for ident in idents:
            if ident.get("system") == system:
                return str(ident["value"])
    if idents:
        return str(idents[0]["value"])
    return None


def _hospital_id(idx: _Index, header: dict[str, Any], encounter: dict[str, Any]) -> str | None:
    return (
        _org_identifier(idx.resolve(header.get("sender"), "Organization"))
        or _org_identifier(idx.resolve(encounter.get("serviceProvider"), "Organization"))
        or (header.get("source") or {}).get("endpoint")
        or None
    )


def _patient_identifier(patient: dict[str, Any]) -> PatientIdentifier:
    idents = [i for i in patient.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    swedish = [i for i in idents if str(i.get("system") or "") in SWEDISH_SYSTEMS]
    for ident in swedish or idents:
        try:
            return PatientIdentifier(system=str(ident.get("system") or ""), value=str(ident["value"]))
        except (InvalidPersonIdentifier, ValidationError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            if swedish:
                raise _Refuse(
                    f"Patient.identifier ({ident.get('system')}): {reason}", expression=["Patient.identifier"]
                ) from None
            continue
    raise _Refuse(
        "Patient has no usable identifier (system and value)",
        code="required",
        expression=["Patient.identifier"],
    )


def _kommun(patient: dict[str, Any]) -> str | None:
    for addr in patient.get("address") or []:
        district = addr.get("district") if isinstance(addr, dict) else None
        if isinstance(district, str) and re.fullmatch(r"\d{4}", district.strip()):
            return district.strip()
    return None


def _primary_care(idx: _Index, patient: dict[str, Any]) -> str | None:
    for ref in patient.get("generalPractitioner") or []:
        org = idx.resolve(ref, "Organization")
        ident = _org_identifier(org)
        if ident:
            return ident
        if (
            isinstance(ref, dict)
            and isinstance(ref.get("identifier"), dict)
            and ref["identifier"].get("value")
        ):
            return str(ref["identifier"]["value"])
    return None
