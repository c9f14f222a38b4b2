from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.planning.rules import ASSUME_SIP_NEEDED
from shared.settings import ServiceSettings


class PlanningSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PLANNING_", extra="ignore")

    http_port: int = 8080
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="How participants reach this service's API (FHIR fullUrl, Location, the FHIR base)",
    )
    web_base_url: str = Field(
        default="http://localhost:8083",
        description="Where people read the plan (the web service, services/web): the link in invitations "
        "and notices is <this>/plans/<id> (PLANNING_WEB_BASE_URL or SIP_WEB_BASE_URL)",
    )
    invitation_deadline_days: int = Field(
        default=3, ge=1, le=30, description="LUS: SIP invitation within N days of ready-for-discharge"
    )

    # ---- hospital intake (HL7 v2 ADT over MLLP; FHIR messages on POST /fhir/$process-message) ----
    mllp_enabled: bool = Field(default=True, description="Listen for HL7 v2 ADT over MLLP")
    mllp_host: str = Field(default="127.0.0.1", description="MLLP listen address (0.0.0.0 in containers)")
    mllp_port: int = Field(default=2575, ge=0, le=65535, description="MLLP listen port (0 = any free port)")
    mllp_max_frame_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest HL7 message; a larger frame closes the connection"
    )
    mllp_idle_timeout: float = Field(
        default=300.0, gt=0, description="Seconds an idle MLLP connection is kept open"
    )
    intake_timezone: str = Field(
        default="Europe/Stockholm", description="Zone of HL7/FHIR times sent without an offset"
    )
    intake_assume_sip_needed: bool = Field(
        default=ASSUME_SIP_NEEDED,
        description="HL7 ADT and FHIR notifications do not say whether the person needs help from both "
        "kommun and region. True: hospitals send this hub only the LUS notices of patients who do, so "
        "ready-for-discharge (or discharge) opens a SIP case. False: such stays are only recorded. "
        "The JSON paths say it per message and are not affected.",
    )

    # ---- deadlines and escalation (services/planning/deadlines.py, scheduler.py) ----
    deadline_day_counting: Literal["calendar", "working"] = Field(
        default="calendar",
        description="How deadline days are counted in Europe/Stockholm time: calendar days, or Swedish "
        "working days (not weekends, public holidays, midsommarafton, julafton, nyårsafton); the deadline "
        "is at the same local clock time. The 24 h admission-notice rule is always clock hours.",
    )
    meeting_deadline_days: int = Field(
        default=14,
        ge=1,
        le=365,
        description="Regional agreement: SIP meeting within N days of the invitation",
    )
    follow_up_grace_days: int = Field(
        default=0, ge=0, le=90, description="A planned follow-up not held N days after its date is escalated"
    )
    consent_expiry_warning_days: int = Field(
        default=14, ge=0, le=365, description="Escalate N days before a consent's end date"
    )
    deadline_check_interval: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds between two scans for breached deadlines"
    )
    consent_gate_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for the consent gate before a read is refused (503)"
    )
