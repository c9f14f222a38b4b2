"""Versioned message contracts between the services (and from hospital integrations).

Rules (see README, "Message catalogue"):
- every contract is a frozen pydantic model that ignores unknown fields (readers are tolerant);
- every contract carries its exchange and routing key; the routing key ends in ``.vN``;
- a contract changes only additively within a version; a breaking change gets a new routing key;
- ``message_id`` is the idempotency key: consumers remember it and never act twice.

Personal data travels only where the receiver needs it: the patient identifier goes to consent
(consent is about a person); invitations to notify carry no patient identifier and no health data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from shared.identifiers import parse_person_identifier

# ---- exchanges ------------------------------------------------------------------------------
HOSPITAL_EVENTS = "hospital.events"  # topic: hospital integrations publish stay events here
PLANNING_EVENTS = "planning.events"  # topic
CONSENT_EVENTS = "consent.events"  # topic
NOTIFY_EVENTS = "notify.events"  # topic
CONSENT_COMMANDS = "consent.commands"  # direct, owned by consent
NOTIFY_COMMANDS = "notify.commands"  # direct, owned by notify

EVENT_EXCHANGES = (HOSPITAL_EVENTS, PLANNING_EVENTS, CONSENT_EVENTS, NOTIFY_EVENTS)
COMMAND_EXCHANGES = (CONSENT_COMMANDS, NOTIFY_COMMANDS)


def _person_id(value: str) -> str:
    return parse_person_identifier(value).value


PersonId = Annotated[str, AfterValidator(_person_id)]
"""A personnummer or samordningsnummer, validated (date, Luhn, +60) and stored as 12 digits."""

HsaId = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9\-]+$")]
KommunCode = Annotated[str, Field(pattern=r"^\d{4}$")]


def _now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every message. ``exchange`` and ``routing_key`` are class-level metadata."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    exchange: ClassVar[str]
    routing_key: ClassVar[str]

    message_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_now)
    correlation_id: str | None = Field(
        default=None, description="Carried from the cause, end to end (one discharge → one id)."
    )


# ---- hospital → planning ---------------------------------------------------------------------
class PatientRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    identifier: PersonId
    kommun_code: KommunCode = Field(description="Home municipality (kommunkod, 4 digits)")
    primary_care_unit_hsa_id: HsaId | None = Field(
        default=None, description="The person's listed primary-care unit (vårdcentral), HSA-id"
    )
    protected_identity: bool = Field(
        default=False, description="Skyddad folkbokföring: address and whereabouts never sent on"
    )


class DischargeNotified(Contract):
    """A hospital says the person is ready for discharge (utskrivningsklar) from inpatient care.

    ``ready_for_discharge_at`` is the exact timestamp the law's deadlines (and payment
    responsibility) run from; it must carry a time zone.
    """

    exchange: ClassVar[str] = HOSPITAL_EVENTS
    routing_key: ClassVar[str] = "hospital.discharge.v1"

    episode_id: str = Field(min_length=1, max_length=128, description="The hospital's stay id")
    hospital_hsa_id: HsaId
    patient: PatientRef
    ready_for_discharge_at: AwareDatetime
    expected_discharge_at: AwareDatetime | None = None
    needs_kommun_support: bool = Field(description="Needs help from the municipality after discharge")
    needs_region_support: bool = Field(description="Needs help from the region (primary care, …)")


# ---- planning → consent ----------------------------------------------------------------------
ConsentPurpose = Literal["draw-up-plan", "share-information", "send-invitation"]
ALL_PURPOSES: tuple[ConsentPurpose, ...] = ("draw-up-plan", "share-information", "send-invitation")


class ConsentRequested(Contract):
    """Planning asks consent to collect the person's consent for a SIP case."""

    exchange: ClassVar[str] = CONSENT_COMMANDS
    routing_key: ClassVar[str] = "consent.request.v1"

    case_id: UUID
    patient_identifier: PersonId
    is_child: bool = False
    purposes: tuple[ConsentPurpose, ...] = ALL_PURPOSES
    proposed_recipients: tuple[HsaId, ...] = ()
    requested_by_hsa_id: HsaId | None = None


class RecordConsent(Contract):
    """Record a consent decision (the message path; the HTTP API takes the same body)."""

    exchange: ClassVar[str] = CONSENT_COMMANDS
    routing_key: ClassVar[str] = "consent.record.v1"

    case_id: UUID | None = None
    patient_identifier: PersonId
    decision: Literal["granted", "declined"]
    purposes: tuple[ConsentPurpose, ...] = ALL_PURPOSES
    recipients: tuple[HsaId, ...] = ()
    given_by: Literal["patient", "guardians", "representative"] = "patient"
    method: Literal["oral", "written"] = "oral"
    recorded_by_hsa_id: HsaId
    valid_until: AwareDatetime | None = None


# ---- consent → everyone ----------------------------------------------------------------------
class ConsentGranted(Contract):
    exchange: ClassVar[str] = CONSENT_EVENTS
    routing_key: ClassVar[str] = "consent.granted.v1"

    consent_id: UUID
    case_id: UUID | None
    patient_identifier: PersonId
    purposes: tuple[ConsentPurpose, ...]
    recipients: tuple[HsaId, ...]
    valid_until: AwareDatetime | None = None


class ConsentDeclined(Contract):
    exchange: ClassVar[str] = CONSENT_EVENTS
    routing_key: ClassVar[str] = "consent.declined.v1"

    consent_id: UUID
    case_id: UUID | None
    patient_identifier: PersonId


# ---- planning → notify -----------------------------------------------------------------------
class SendInvitation(Contract):
    """Invite the participants of a SIP case to planning. Carries no personal data."""

    exchange: ClassVar[str] = NOTIFY_COMMANDS
    routing_key: ClassVar[str] = "notify.send-invitation.v1"

    case_id: UUID
    case_reference: str = Field(description="Short human reference, e.g. SIP-2026-4F3A9C")
    consent_id: UUID
    recipients: tuple[HsaId, ...] = Field(min_length=1)
    invitation_due_at: AwareDatetime
    plan_url: str = Field(description="Where an authorised participant reads the plan (FHIR)")
    language: Literal["sv", "en"] = "sv"


# ---- notify → planning -----------------------------------------------------------------------
class InvitationSent(Contract):
    exchange: ClassVar[str] = NOTIFY_EVENTS
    routing_key: ClassVar[str] = "notify.invitation-sent.v1"

    case_id: UUID
    notification_id: UUID
    recipient_hsa_id: HsaId
    channel: Literal["email", "webhook", "sms"]
    sent_at: AwareDatetime


ALL_CONTRACTS: tuple[type[Contract], ...] = (
    DischargeNotified,
    ConsentRequested,
    RecordConsent,
    ConsentGranted,
    ConsentDeclined,
    SendInvitation,
    InvitationSent,
)
