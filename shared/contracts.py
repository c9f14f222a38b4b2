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

from datetime import UTC, date, datetime
from typing import Annotated, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.hospital import HospitalEvent
from shared.identifiers import parse_person_identifier
from shared.timestamps import Timestamp

# ---- exchanges ------------------------------------------------------------------------------
HOSPITAL_EVENTS = "hospital.events"  # topic: hospital integrations publish stay events here
PLANNING_EVENTS = "planning.events"  # topic
CONSENT_EVENTS = "consent.events"  # topic
NOTIFY_EVENTS = "notify.events"  # topic
CONSENT_COMMANDS = "consent.commands"  # direct, owned by consent
NOTIFY_COMMANDS = "notify.commands"  # direct, owned by notify
CONSENT_AUDIT = "consent.audit"  # direct, owned by consent: reads to file in a person's audit trail

EVENT_EXCHANGES = (HOSPITAL_EVENTS, PLANNING_EVENTS, CONSENT_EVENTS, NOTIFY_EVENTS)
COMMAND_EXCHANGES = (CONSENT_COMMANDS, NOTIFY_COMMANDS, CONSENT_AUDIT)


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
    occurred_at: Timestamp = Field(default_factory=_now)
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
    ready_for_discharge_at: Timestamp
    expected_discharge_at: Timestamp | None = None
    needs_kommun_support: bool = Field(description="Needs help from the municipality after discharge")
    needs_region_support: bool = Field(description="Needs help from the region (primary care, …)")


class HospitalStayEvent(Contract):
    """One event of a hospital stay in the suite's one event model (:class:`shared.hospital.HospitalEvent`).

    Planning's hospital intake publishes one for every event of an accepted HL7 v2 ADT message (MLLP)
    or FHIR message bundle (``$process-message``); a hospital integration may publish it directly
    (the RabbitMQ JSON path). ``DischargeNotified`` is mapped into the same model.
    """

    exchange: ClassVar[str] = HOSPITAL_EVENTS
    routing_key: ClassVar[str] = "hospital.stay-event.v1"

    event: HospitalEvent


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
    valid_until: Timestamp | None = None


# ---- consent → everyone ----------------------------------------------------------------------
class ConsentGranted(Contract):
    exchange: ClassVar[str] = CONSENT_EVENTS
    routing_key: ClassVar[str] = "consent.granted.v1"

    consent_id: UUID
    case_id: UUID | None
    patient_identifier: PersonId
    purposes: tuple[ConsentPurpose, ...]
    recipients: tuple[HsaId, ...]
    valid_until: Timestamp | None = None
    guardian_identifiers: tuple[PersonId, ...] = Field(
        default=(),
        description="For a child: the guardians named on the consent (they may read the child's plan)",
    )


class ConsentDeclined(Contract):
    exchange: ClassVar[str] = CONSENT_EVENTS
    routing_key: ClassVar[str] = "consent.declined.v1"

    consent_id: UUID
    case_id: UUID | None
    patient_identifier: PersonId


# ---- planning → notify -----------------------------------------------------------------------
NeedText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class MeetingNeeds(BaseModel):
    """What the person needs at the SIP meeting, for the participants to prepare (issue #22): recorded
    by the coordinator (``PUT /cases/{id}/preferences``) and carried to notify so every notice a
    participant acts on states it ("Inför mötet"). No identifier and no health data: a language code,
    yes/no answers, minutes and short practical texts (notify's personnummer and health-data guards
    run over every text rendered from them)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    interpreter_language: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
        description="An interpreter in this language is needed (BCP 47 code, e.g. 'ar')",
    )
    picture_support: bool = Field(default=False, description="Bildstöd: the meeting uses picture support")
    longest_duration_minutes: int | None = Field(
        default=None, ge=10, le=480, description="The longest the person can take part, in minutes"
    )
    someone_stays_after: bool = Field(
        default=False, description="Someone stays afterwards to go through what was decided with the person"
    )
    avoid: NeedText | None = Field(default=None, description="Disturbances to avoid (short, practical)")
    place: NeedText | None = Field(default=None, description="The person's wish for the place")
    time_of_day: NeedText | None = Field(default=None, description="The person's wish for the time of day")
    room: NeedText | None = Field(default=None, description="The room and its surroundings")
    attends_whole_meeting: bool = Field(
        default=True, description="False: the person takes part in only a part of the meeting"
    )

    @property
    def empty(self) -> bool:
        """Nothing to prepare for: no block is rendered."""
        return self == MeetingNeeds()


class SendInvitation(Contract):
    """Invite the participants of a SIP case to planning. No identifier, no health data: what the person
    needs at the meeting travels as :class:`MeetingNeeds` (codes, yes/no, short practical texts)."""

    exchange: ClassVar[str] = NOTIFY_COMMANDS
    routing_key: ClassVar[str] = "notify.send-invitation.v1"

    case_id: UUID
    case_reference: str = Field(description="Short human reference, e.g. SIP-2026-4F3A9C")
    consent_id: UUID
    recipients: tuple[HsaId, ...] = Field(min_length=1)
    invitation_due_at: Timestamp
    plan_url: str = Field(description="Where an authorised participant reads the plan (the web page)")
    language: Literal["sv", "en"] = "sv"
    # additive (optional) since issue #6: the meeting, the owning unit, the person's language need
    meeting_start: Timestamp | None = Field(
        default=None, description="When the SIP meeting starts; without it no calendar invitation is sent"
    )
    meeting_end: Timestamp | None = Field(default=None, description="When the SIP meeting ends")
    meeting_location: str | None = Field(
        default=None,
        max_length=160,
        description="Where the meeting is (room, address); never health data or the person's address",
    )
    meeting_video_url: str | None = Field(
        default=None, max_length=500, pattern=r"^https?://\S+$", description="Video link when remote"
    )
    organizer_hsa_id: HsaId | None = Field(
        default=None, description="The owning unit that calls the meeting (organizer of the event)"
    )
    interpreter_language: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
        description="The person needs an interpreter in this language (BCP 47 code, e.g. 'ar')",
    )
    # additive (optional) since issue #22
    meeting_needs: MeetingNeeds | None = Field(
        default=None, description="What the person needs at the meeting (none: no 'Inför mötet' block)"
    )


# ---- notify → planning -----------------------------------------------------------------------
class InvitationSent(Contract):
    exchange: ClassVar[str] = NOTIFY_EVENTS
    routing_key: ClassVar[str] = "notify.invitation-sent.v1"

    case_id: UUID
    notification_id: UUID
    recipient_hsa_id: HsaId
    channel: Literal["email", "webhook", "sms"]
    sent_at: Timestamp


# ---- planning → everyone: deadlines (issue #5) ----------------------------------------------------
class DeadlineBreached(Contract):
    """A deadline of a SIP case passed unmet and is escalated to the owning unit. No personal data.

    Kinds: ``admission-notice`` (the hospital's admission notice came later than 24 h after the
    admission), ``invitation`` (no SIP invitation within N days of ready-for-discharge, LUS),
    ``meeting`` (no meeting by the regional deadline), ``follow-up`` (the planned follow-up passed
    without one), ``consent-expiry`` (the consent ends within N days). Readers tolerate new kinds.
    Published once per deadline: ``message_id`` is derived from the case, the kind and the cycle.
    """

    exchange: ClassVar[str] = PLANNING_EVENTS
    routing_key: ClassVar[str] = "planning.deadline-breached.v1"

    case_id: UUID
    case_reference: str = Field(description="Short human reference, e.g. SIP-2026-4F3A9C")
    kind: str = Field(
        pattern=r"^[a-z][a-z\-]{1,39}$",
        description="admission-notice | invitation | meeting | follow-up | consent-expiry (open set)",
    )
    due_at: Timestamp
    breached_at: Timestamp = Field(description="When the breach was detected and escalated")
    owner_hsa_id: HsaId = Field(description="The unit that owns the case and is escalated to")


ALL_CONTRACTS: tuple[type[Contract], ...] = (
    DischargeNotified,
    HospitalStayEvent,
    ConsentRequested,
    RecordConsent,
    ConsentGranted,
    ConsentDeclined,
    SendInvitation,
    InvitationSent,
    DeadlineBreached,
)


# ---- consent: withdrawal and the decision gate (issue #4) --------------------------------------
class ConsentWithdrawn(Contract):
    """A consent no longer holds, from ``effective_at`` on: the person withdrew it (återkallelse,
    ``cause=withdrawal``) or it was cancelled as wrongly registered (makulering,
    ``cause=cancellation``). Sharing under it stops at once; pending disclosures are to be stopped
    and participants told the SIP is paused, without health data. A new consent is a new record.
    """

    exchange: ClassVar[str] = CONSENT_EVENTS
    routing_key: ClassVar[str] = "consent.withdrawn.v1"

    consent_id: UUID
    case_id: UUID | None
    patient_identifier: PersonId
    cause: Literal["withdrawal", "cancellation"]
    effective_at: Timestamp
    purposes: tuple[ConsentPurpose, ...] = ()
    recipients: tuple[HsaId, ...] = ()


InformationCategory = Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[a-z][a-z0-9\-]+$")]


class ConsentDecisionRequested(Contract):
    """Request/reply (not via the outbox): may ``recipient_hsa_id`` receive ``category`` about the
    person for ``purpose`` at ``at`` (default: now)? The consent service answers on the request's
    ``reply_to`` with a :class:`ConsentDecisionReply`; every answer is audited. Categories: the LUS
    notices (``lus-admission-notice``, ``lus-ready-for-discharge``, ``lus-discharged``, …) and
    ``invitation-logistics`` need no consent; ``sip-plan``, ``care-needs``, ``health-data``,
    ``psychiatric``, ``substance-use``, ``medication``, ``social-services`` do.
    """

    exchange: ClassVar[str] = CONSENT_COMMANDS
    routing_key: ClassVar[str] = "consent.decide.v1"

    patient_identifier: PersonId
    recipient_hsa_id: HsaId
    category: InformationCategory
    purpose: ConsentPurpose
    at: Timestamp | None = None
    case_id: UUID | None = None
    requested_by: str | None = Field(
        default=None, max_length=128, description="The asking system or unit (HSA-id), for the audit log"
    )


AccessBasis = Literal[
    "owner", "participant", "hospital", "covered", "operator", "own-data", "guardian", "none"
]  # fmt: skip


class AccessRecorded(Contract):
    """A read of a person's data in planning or notify, for the person's audit trail in consent
    (IHE BALP minimal record: who, on which basis, what was asked for — never what was disclosed).

    Sent through the reading service's outbox in the transaction that records the read, so an
    audited read is never lost. Consent files it under the person (``patient_identifier``, or the
    person of ``case_id`` when only the case is known).
    """

    exchange: ClassVar[str] = CONSENT_AUDIT  # its own exchange: a reader may file reads, not commands
    routing_key: ClassVar[str] = "consent.access-recorded.v1"

    service: Literal["planning", "notify"]
    action: Literal["read", "search"] = "read"
    outcome: Literal["permit", "deny"]
    basis: AccessBasis
    what: str = Field(
        min_length=1, max_length=64,
        description="Resource type and id, or the search's parameter names (no values): CarePlan/<id>",
    )  # fmt: skip
    accessed_at: Timestamp
    patient_identifier: PersonId | None = None
    case_id: UUID | None = None
    reader_hsa_id: HsaId | None = Field(default=None, description="The reading organisation")
    reader_kind: Literal["organisation", "operator", "person", "guardian"] = "organisation"
    reader_subject: str | None = Field(
        default=None, max_length=128, description="The user or system at the issuer (token sub)"
    )


class ConsentDecisionReply(BaseModel):
    """The answer to a :class:`ConsentDecisionRequested` (and of ``POST /decisions``). No personal data."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    decision: Literal["permit", "deny"]
    reason: str = Field(
        description="Reason code, e.g. consent-permits, lus-statutory-notice, consent-withdrawn"
    )
    basis: Literal["consent", "lus-logistics", "none"]
    consent_id: UUID | None = Field(default=None, description="The consent the decision relied on")
    audit_event_id: UUID | None = Field(default=None, description="The AuditEvent that records it")
    decided_for: Timestamp | None = Field(default=None, description="The time T the decision is for")
    request_message_id: UUID | None = None
    detail: str | None = Field(default=None, description="Why a request could not be decided (no values)")


# the consent contracts above are declared after the first list; every contract is in ALL_CONTRACTS
ALL_CONTRACTS = (*ALL_CONTRACTS, ConsentWithdrawn, ConsentDecisionRequested, AccessRecorded)


class CaseNotice(Contract):
    """Planning tells a SIP's participants that something happened to it. No personal data: what
    happened, the case reference and where an authorised reader finds the plan.

    Kinds: ``plan-established`` (the person approved a plan version: it is readable at ``plan_url`` by
    the organisations the consent covers — planning asks the consent gate on every read by anyone but
    the owning unit; the notice itself carries only the reference and the link), ``follow-up-due``,
    ``case-closed`` (with ``reason_code``). Readers tolerate new kinds.
    """

    exchange: ClassVar[str] = PLANNING_EVENTS
    routing_key: ClassVar[str] = "planning.case-notice.v1"

    case_id: UUID
    case_reference: str
    kind: str = Field(pattern=r"^[a-z][a-z\-]{1,39}$")
    recipients: tuple[HsaId, ...]
    owner_hsa_id: HsaId
    consent_id: UUID | None = None
    plan_url: str | None = None
    plan_version: int | None = None
    follow_up_date: date | None = None
    reason_code: (
        Literal["followed-up", "deceased", "consent-withdrawn", "cancelled", "refused", "other"] | None
    ) = None
    interpreter_language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    # additive (optional) since issue #22: stated in plan-established and follow-up-due
    meeting_needs: MeetingNeeds | None = Field(
        default=None, description="What the person needs at the meeting (none: no 'Inför mötet' block)"
    )


ALL_CONTRACTS = (*ALL_CONTRACTS, CaseNotice)
