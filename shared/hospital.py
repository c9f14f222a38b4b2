"""The one internal model of a hospital-stay event, whatever wire format it arrived in.

HL7 v2 ADT, FHIR R4 messages (MedCom HospitalNotification, Da Vinci notifications) and plain JSON
are all mapped to :class:`HospitalEvent`. Names are never carried: the planning service needs the
identifier, the stay and the times, not the person's name.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator

from shared.identifiers import (
    PERSONNUMMER_OID,
    PERSONNUMMER_SYSTEM,
    SAMORDNINGSNUMMER_OID,
    SAMORDNINGSNUMMER_SYSTEM,
    InvalidPersonIdentifier,
    parse_person_identifier,
)
from shared.timestamps import Timestamp

EventKind = Literal[
    "admitted",
    "expected-discharge-changed",
    "ready-for-discharge",
    "ready-revoked",
    "discharged",
    "leave-started",
    "leave-ended",
    "deceased",
    "cancelled",
    "corrected",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

Source = Literal["hl7v2", "fhir", "json"]

#: identifier systems that mean "Swedish personnummer" / "samordningsnummer" (FHIR URI or OID form)
SWEDISH_SYSTEMS = {
    PERSONNUMMER_SYSTEM: "personnummer",
    PERSONNUMMER_OID: "personnummer",
    PERSONNUMMER_OID.removeprefix("urn:oid:"): "personnummer",
    SAMORDNINGSNUMMER_SYSTEM: "samordningsnummer",
    SAMORDNINGSNUMMER_OID: "samordningsnummer",
    SAMORDNINGSNUMMER_OID.removeprefix("urn:oid:"): "samordningsnummer",
}

_KOMMUN = re.compile(r"^\d{4}$")
#: control characters (NUL above all: PostgreSQL text cannot hold it) and lone UTF-16 surrogates
#: (not encodable as UTF-8) — what a store or the broker cannot carry
_UNSTORABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _stored(max_length: int) -> AfterValidator:
    """A text the stores hold as given: at most ``max_length`` characters (the column's width, see
    services/planning/adapters/store.py) and no control characters. Checked here, where every intake
    path builds its events, so an accepted message never fails in the stay handler for its content."""

    def check(value: str) -> str:
        if len(value) > max_length:
            raise ValueError(f"at most {max_length} characters are accepted (got {len(value)})")
        bad = _UNSTORABLE.search(value)
        if bad:
            raise ValueError(f"control character U+{ord(bad.group()):04X} is not accepted")
        return value

    return AfterValidator(check)


Text64 = Annotated[str, _stored(64)]
Text200 = Annotated[str, _stored(200)]


class PatientIdentifier(BaseModel):
    """A patient identifier. Swedish ones are validated and canonicalised (12 digits, FHIR system);
    any other system (Danish CPR, US MRN, ...) is passed through as given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: Text200
    value: Text64
    kind: Literal["personnummer", "samordningsnummer", "other"] = "other"

    @model_validator(mode="before")
    @classmethod
    def _swedish(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        system = str(data.get("system") or "").strip()
        value = str(data.get("value") or "").strip()
        if not system:
            raise ValueError("identifier system is required")
        if not value:
            raise ValueError("identifier value is required")
        labelled = SWEDISH_SYSTEMS.get(system)
        if labelled is None:
            return {"system": system, "value": value, "kind": "other"}
        pin = parse_person_identifier(value)  # InvalidPersonIdentifier is a ValueError
        if pin.kind != labelled:
            raise InvalidPersonIdentifier(f"value is a {pin.kind} but the system says {labelled}")
        return {"system": pin.system, "value": pin.value, "kind": pin.kind}

    @property
    def is_swedish(self) -> bool:
        return self.kind != "other"


class HospitalEvent(BaseModel):
    """One thing that happened in one hospital stay.

    Also the body of the ``hospital.stay-event.v1`` contract, so unknown fields are ignored (readers
    are tolerant); a wrong value of a known field is still refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: Source
    #: MSH-10 for HL7 v2, MessageHeader.id for FHIR (Bundle.id when there is no header id)
    source_message_id: Text200
    #: the sender's own event code: "ADT^A03", "discharge-inpatient-home", "notification-admit", ...
    source_event_code: Text64
    kind: EventKind
    occurred_at: Timestamp
    stay_id: Text200
    hospital_id: Text200 | None = None
    patient: PatientIdentifier
    kommun_code: str | None = None
    primary_care_unit: Text200 | None = None
    expected_discharge_at: Timestamp | None = None
    discharge_disposition: Text200 | None = None
    #: for kind == "cancelled": the kind of event that is cancelled, and its message when known
    cancels: EventKind | None = None
    cancels_message_id: Text200 | None = None
    #: for kind == "corrected": the kind of event that is corrected (None: stay/patient data changed)
    corrects: EventKind | None = None
    corrects_message_id: Text200 | None = None
    #: whether the person needs help from the kommun / the region after discharge, when the sender says
    #: so (the JSON path does; HL7 v2 and FHIR notifications do not — planning then applies its
    #: ``PLANNING_INTAKE_ASSUME_SIP_NEEDED`` setting)
    needs_kommun_support: bool | None = None
    needs_region_support: bool | None = None

    @field_validator("kommun_code")
    @classmethod
    def _kommun(cls, v: str | None) -> str | None:
        if v is not None and not _KOMMUN.match(v):
            raise ValueError("kommun code must be four digits")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> HospitalEvent:
        if self.kind == "cancelled":
            if self.cancels is None:
                raise ValueError("a cancelled event must say what it cancels")
        elif self.cancels is not None or self.cancels_message_id is not None:
            raise ValueError("only a cancelled event may refer to a cancelled event")
        if self.kind != "corrected" and (self.corrects is not None or self.corrects_message_id):
            raise ValueError("only a corrected event may refer to a corrected event")
        return self

    @property
    def ready_for_discharge_at(self) -> datetime | None:
        """The exact ready-for-discharge timestamp (payment responsibility depends on it)."""
        return self.occurred_at if self.kind == "ready-for-discharge" else None
