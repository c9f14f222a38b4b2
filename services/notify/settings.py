from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class NotifySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore")

    http_port: int = 8082
    fhir_base_url: str = Field(
        default="http://127.0.0.1:8082",
        description="How clients reach this service's FHIR API: absolute links (fullUrl, paging) are made "
        "from it (a name of its own: SIP_PUBLIC_BASE_URL is planning's)",
    )

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = Field(default=False, description="Require STARTTLS on a plain connection")
    smtp_tls: bool = Field(default=False, description="Implicit TLS from the first byte (port 465)")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    mail_from: str = "sip-suite@localhost"
    send_timeout: float = Field(default=10.0, gt=0, description="Seconds for one SMTP conversation")

    dispatch_interval: float = Field(default=0.5, gt=0, description="Seconds between dispatcher polls")
    retry_base_seconds: float = Field(default=1.0, gt=0, description="First retry delay; doubles each time")
    retry_max_seconds: float = Field(default=300, gt=0, description="Longest retry delay")
    max_send_attempts: int = Field(default=10, ge=1, le=100, description="Sends before a mail is failed")
    claim_lease_seconds: float = Field(
        default=300.0,
        ge=5,
        description="How long a dispatcher's claim on a notification holds while it sends it; a claim "
        "older than this belongs to a replica that died mid-send, and another replica sends the "
        "notification again (same Message-ID). Keep well above send_timeout and http_timeout",
    )
    replica_id: str = Field(
        default="",
        description="Names this notify replica's claims (stable across its restarts, distinct between "
        "replicas; e.g. the pod name of a StatefulSet); empty = host name and HTTP port. A restarted "
        "replica sends again at once what it was sending when it stopped; other replicas' claims wait "
        "for their lease",
    )
    send_concurrency: int = Field(default=8, ge=1, le=64, description="E-mails in flight at once")
    retention_notification_payload_days: int = Field(
        default=30,
        ge=0,
        description="The rendered text, address, calendar file and meeting needs of a sent or cancelled "
        "notification are blanked this many days after it was made; the delivery record (recipient, "
        "channel, status, times, Message-ID) is kept. 0 = keep for ever",
    )

    # ---- webhook and SMS channels (issue #6) ----
    webhook_secrets_file: str | None = Field(
        default=None,
        description=(
            "YAML file mapping HSA-id → webhook shared secret; NOTIFY_WEBHOOK_SECRET_<HSA-ID> "
            "(HSA-id in capitals, other characters as _) in the environment wins over it"
        ),
    )
    http_timeout: float = Field(default=10.0, gt=0, description="Seconds for one webhook or SMS request")
    sms_gateway_url: str | None = Field(
        default=None, description="SMS gateway endpoint: POST {to, text} as JSON (https)"
    )
    sms_gateway_token: SecretStr | None = Field(default=None, description="Bearer token for the gateway")
    meeting_default_minutes: int = Field(
        default=60, ge=5, le=480, description="Length of a meeting sent without an end time (calendar)"
    )

    # ---- meeting reminders (issue #6) ----
    reminder_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 30,
        description=(
            "Hours before the SIP meeting that each invited organisation is reminded; none is scheduled "
            "when the meeting is less than this ahead (the invitation itself carries the time)"
        ),
    )

    # ---- deadline escalations (issue #6) ----
    case_url_template: str = Field(
        default="http://127.0.0.1:8080/cases/{case_id}",
        pattern=r"^https?://\S+$",
        description="Where the owning unit reads a case, in escalations ({case_id} is replaced)",
    )

    @field_validator("smtp_username", "smtp_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        """``NOTIFY_SMTP_USERNAME=`` (as in .env.example, which compose passes on) means no AUTH, not
        a login with an empty name, which a relay without AUTH refuses."""
        return None if isinstance(v, str) and not v.strip() else v
