"""The request and response bodies of consent's HTTP API (JSON; the FHIR routes answer FHIR resources).

One reason to change: the shape of what the API accepts and answers (and with it the OpenAPI schemas).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from services.consent.domain import (
    AuditEntry,
    CancelReason,
    ChildView,
    ConsentRecord,
    Custody,
    Stance,
)
from shared.contracts import ConsentPurpose, HsaId, InformationCategory, PersonId
from shared.timestamps import Timestamp


class GuardianIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stance: Stance = Field(description="consents | objects — one guardian objecting blocks")
    identifier: PersonId | None = Field(default=None, description="The guardian's personnummer, if known")


class ConsentIn(BaseModel):
    """Body of POST /consents. Oral or written; who gave it; for which purposes and recipients."""

    model_config = ConfigDict(extra="forbid")

    case_id: UUID | None = None
    patient_identifier: PersonId
    decision: Literal["granted", "declined"]
    purposes: tuple[ConsentPurpose, ...] = ("draw-up-plan", "share-information", "send-invitation")
    recipients: tuple[HsaId, ...] = Field(
        default=(), description="Organisations covered; empty = those the case proposed"
    )
    given_by: Literal["patient", "guardians", "representative"] = "patient"
    method: Literal["oral", "written"] = "oral"
    recorded_by_hsa_id: HsaId | None = Field(
        default=None,
        description="Optional; when given it must be the calling organisation (the token's HSA-id), "
        "which is always the one recorded",
    )
    valid_until: Timestamp | None = None
    valid_from: Timestamp | None = Field(default=None, description="Start of validity; default: now")
    excluded_organisations: tuple[HsaId, ...] = Field(
        default=(), description="Organisations the consent does not cover ('not the school')"
    )
    excluded_categories: tuple[InformationCategory, ...] = Field(
        default=(),
        description="Information categories not covered ('not my psychiatric history'): sip-plan, "
        "care-needs, health-data, psychiatric, substance-use, medication, social-services",
    )
    custody: Custody | None = Field(default=None, description="For a child: joint (both guardians) or sole")
    guardians: tuple[GuardianIn, ...] = Field(default=(), description="Each guardian's statement (child)")
    child_view: ChildView | None = Field(
        default=None, description="The child's own view (required with guardians)"
    )


class GuardianOut(BaseModel):
    stance: str
    identifier: str | None


class ConsentOut(BaseModel):
    id: UUID
    patient_identifier: str
    case_id: UUID | None
    decision: str
    purposes: list[str]
    recipients: list[str]
    given_by: str
    method: str
    recorded_by_hsa_id: str
    recorded_at: datetime
    valid_until: datetime | None
    status: str
    valid_from: datetime
    excluded_organisations: list[str] = []
    excluded_categories: list[str] = []
    custody: str | None = None
    guardians: list[GuardianOut] = []
    child_view: str | None = None
    status_changed_at: datetime | None = None
    status_changed_by_hsa_id: str | None = Field(
        default=None,
        description="Who withdrew or cancelled it: an organisation's HSA-id, or 'person' / 'guardian' "
        "when the person or a guardian withdrew it with their own e-ID",
    )
    status_reason: str | None = None
    effective_status: str = Field(description="active | pending | expired | withdrawn | cancelled, now")
    version: int = 1

    @classmethod
    def of(cls, r: ConsentRecord, now: datetime) -> ConsentOut:
        return cls(
            id=r.id,
            patient_identifier=r.patient_identifier,
            case_id=r.case_id,
            decision=r.decision,
            purposes=list(r.purposes),
            recipients=list(r.recipients),
            given_by=r.given_by,
            method=r.method,
            recorded_by_hsa_id=r.recorded_by_hsa_id,
            recorded_at=r.recorded_at,
            valid_until=r.valid_until,
            status=r.status,
            valid_from=r.starts_at,
            excluded_organisations=list(r.excluded_organisations),
            excluded_categories=list(r.excluded_categories),
            custody=r.custody,
            guardians=[GuardianOut(stance=g.stance, identifier=g.identifier) for g in r.guardians],
            child_view=r.child_view,
            status_changed_at=r.status_changed_at,
            status_changed_by_hsa_id=r.status_changed_by_hsa_id,
            status_reason=r.status_reason,
            effective_status=r.effective_status(now),
            version=r.version,
        )


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recorded_by_hsa_id: HsaId | None = Field(
        default=None,
        description="Optional; when given it must be the calling organisation (the token's HSA-id). "
        "A person or guardian withdrawing with their own e-ID leaves it out",
    )
    withdrawn_at: Timestamp | None = Field(
        default=None, description="When the person withdrew it, if earlier than now (never later)"
    )
    method: Literal["oral", "written"] = "oral"


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cancelled_by_hsa_id: HsaId | None = Field(
        default=None, description="Optional; when given it must be the calling organisation (the token's)"
    )
    reason: CancelReason = Field(description="wrong-person | registration-error | duplicate | not-given")


class DecisionIn(BaseModel):
    """May ``recipient_hsa_id`` receive ``category`` about the person for ``purpose`` at ``at``?"""

    model_config = ConfigDict(extra="forbid")

    patient_identifier: PersonId
    recipient_hsa_id: HsaId
    category: InformationCategory
    purpose: ConsentPurpose
    at: Timestamp | None = Field(default=None, description="Default: now")
    case_id: UUID | None = None
    requested_by: str | None = Field(default=None, max_length=128, description="Asking system or unit")


class AuditOut(BaseModel):
    """One line of "who received, read (or was refused) what about me"."""

    id: UUID
    recorded_at: datetime
    action: str = Field(description="decision | withdrawal | cancellation | read | search")
    outcome: str = Field(description="permit | deny | done")
    reason: str = Field(description="The reason code; for a read or search, what was read")
    basis: str = Field(
        description="consent | lus-logistics | none (decisions); owner | participant | covered | "
        "operator | own-data | guardian | hospital | none (reads)"
    )
    recipient_hsa_id: str | None = Field(
        description="The organisation that received or read (None: the person or a guardian)"
    )
    category: str | None
    purpose: str | None
    consent_id: UUID | None
    case_id: UUID | None
    decision_at: datetime | None
    requested_by: str | None
    channel: str
    source: str = Field(default="consent", description="The service where it happened")

    @classmethod
    def of(cls, e: AuditEntry) -> AuditOut:
        return cls(
            id=e.id,
            recorded_at=e.recorded_at,
            action=e.action,
            outcome=e.outcome,
            reason=e.reason,
            basis=e.basis,
            recipient_hsa_id=e.recipient_hsa_id,
            category=e.category,
            purpose=e.purpose,
            consent_id=e.consent_id,
            case_id=e.case_id,
            decision_at=e.decision_at,
            requested_by=e.requested_by,
            channel=e.channel,
            source=e.source or "consent",
        )


class ConsentRequestOut(BaseModel):
    case_id: UUID
    patient: str = Field(description="Masked identifier")
    is_child: bool
    purposes: list[str]
    proposed_recipients: list[str]
    requested_at: datetime
    status: str


class PersonIdModel(BaseModel):
    v: PersonId
