"""The organisation directory: who takes part in a SIP and how to reach them.

A YAML (or JSON) file lists organisations with their HSA-id, kind, whom they serve (kommun codes, or
patients listed with them) and contact channels. Real systems route by the person's home
municipality and listed primary-care unit; so does this. An organisation may name its functional
contact (``contact:``), which the invitations it sends as the owning unit give to their readers.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts import HsaId
from shared.errors import PermanentError

OrgKind = Literal["kommun_social_services", "primary_care_unit", "hospital", "region_other", "other"]


class EmailChannel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["email"] = "email"
    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


class WebhookChannel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["webhook"] = "webhook"
    url: str


class SmsChannel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["sms"] = "sms"
    number: str


Channel = EmailChannel | WebhookChannel | SmsChannel


class Contact(BaseModel):
    """The organisation's functional contact for SIP questions: a function (never a person), and how to
    reach it. Recipients of its invitations are told to get in touch here."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: the function, e.g. "SIP-samordnare, Vårdcentralen Södermalm" (one line)
    name: str = Field(min_length=1, max_length=120, pattern=r"^[^\x00-\x1f]+$")
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 \-]{4,24}$")
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)


class Serves(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kommun_codes: tuple[str, ...] = ()
    listed_patients: bool = Field(
        default=False,
        description="Serves the patients listed with it (primary care): matched by HSA-id",
    )


class IntakeExpectation(BaseModel):
    """How often a sender's messages usually come: the longest usual gap between two accepted
    messages, in working hours and off hours. Longer silence than that raises the alert
    ``IntakeSenderSilent`` (deploy/prometheus/alerts.yml). Fields left out come from
    ``intake_defaults``; ``monitored: false`` leaves the sender out."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    monitored: bool | None = None
    working_hours_gap_minutes: float | None = Field(default=None, gt=0)
    off_hours_gap_minutes: float | None = Field(default=None, gt=0)


class IntakeDefaults(BaseModel):
    """What applies to every hospital (and to each organisation with ``intake:``) unless it says
    otherwise. Working hours are weekdays (Monday 1 … Sunday 7) between ``working_hours_start`` and
    ``working_hours_end`` in ``timezone``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    working_hours_gap_minutes: float = Field(default=60, gt=0)
    off_hours_gap_minutes: float = Field(default=360, gt=0)
    working_hours_start: int = Field(default=7, ge=0, le=23)
    working_hours_end: int = Field(default=18, ge=1, le=24)
    working_days: tuple[int, ...] = (1, 2, 3, 4, 5)
    timezone: str = "Europe/Stockholm"

    def is_working_hours(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        return (
            local.isoweekday() in self.working_days
            and self.working_hours_start <= local.hour < self.working_hours_end
        )


class Organisation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # the same HSA-id shape the message contracts accept; what the directory says is rendered into
    # invitations and CarePlans without a further check
    hsa_id: HsaId
    name: str = Field(min_length=1, max_length=200)
    kind: OrgKind
    serves: Serves = Serves()
    channels: tuple[Channel, ...] = ()
    #: how often its messages usually come (hospitals: ``intake_defaults`` unless given)
    intake: IntakeExpectation | None = None
    #: its functional contact, named in the invitations it sends as the owning unit (optional)
    contact: Contact | None = None


class UnknownRecipient(PermanentError):
    """Routing found no organisation for a required role."""


class Directory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    organisations: tuple[Organisation, ...]
    intake_defaults: IntakeDefaults = IntakeDefaults()

    @model_validator(mode="after")
    def _unique_ids(self) -> Directory:
        seen: set[str] = set()
        for org in self.organisations:
            if org.hsa_id in seen:
                raise ValueError(f"duplicate HSA-id in directory: {org.hsa_id}")
            seen.add(org.hsa_id)
        return self

    def get(self, hsa_id: str) -> Organisation | None:
        for org in self.organisations:
            if org.hsa_id == hsa_id:
                return org
        return None

    def expected_intake_gaps(self, at: datetime) -> dict[str, float]:
        """HSA-id → the longest usual gap (seconds) between two accepted messages from that sender at
        time ``at`` (working hours or off hours): every hospital, and every organisation with an
        ``intake:`` entry, unless ``monitored: false``."""
        d = self.intake_defaults
        working = d.is_working_hours(at)
        gaps: dict[str, float] = {}
        for org in self.organisations:
            i = org.intake
            monitored = i.monitored if i is not None and i.monitored is not None else None
            if monitored is None:  # an ``intake:`` entry says it sends; hospitals send by default
                monitored = i is not None or org.kind == "hospital"
            if not monitored:
                continue
            if working:
                minutes = i.working_hours_gap_minutes if i and i.working_hours_gap_minutes else None
                minutes = minutes or d.working_hours_gap_minutes
            else:
                minutes = i.off_hours_gap_minutes if i and i.off_hours_gap_minutes else None
                minutes = minutes or d.off_hours_gap_minutes
            gaps[org.hsa_id] = minutes * 60.0
        return gaps

    def social_services_for(self, kommun_code: str) -> Organisation:
        for org in self.organisations:
            if org.kind == "kommun_social_services" and kommun_code in org.serves.kommun_codes:
                return org
        raise UnknownRecipient(f"no kommun social services in the directory serve kommun code {kommun_code}")

    def primary_care_for(self, unit_hsa_id: str | None, kommun_code: str) -> Organisation:
        if unit_hsa_id:
            org = self.get(unit_hsa_id)
            if org is None or org.kind != "primary_care_unit":
                raise UnknownRecipient(f"primary-care unit {unit_hsa_id} is not in the directory")
            return org
        for org in self.organisations:
            if org.kind == "primary_care_unit" and kommun_code in org.serves.kommun_codes:
                return org
        raise UnknownRecipient(
            f"no listed primary-care unit given and none in the directory serves kommun code {kommun_code}"
        )


def load_directory(path: str | Path) -> Directory:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"organisation directory not found: {p}") from None
    return Directory.model_validate(data)
