from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.retention import AUDIT_DEFAULT_DAYS, check_audit_days
from shared.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENT_", extra="ignore")

    http_port: int = 8081
    fhir_base_url: str = Field(
        default="http://127.0.0.1:8081",
        description="How clients reach this service's FHIR API: absolute links (fullUrl, paging) are made "
        "from it (a name of its own: SIP_PUBLIC_BASE_URL is planning's)",
    )
    retention_audit_days: int = Field(
        default=AUDIT_DEFAULT_DAYS,
        ge=0,
        description="AuditEvents (the access log) are deleted this many days after they were recorded, "
        "never with messages; at least 1826 (five years, HSLF-FS 2016:40), a lower value is refused at "
        "start. 0 = keep for ever",
    )

    @field_validator("retention_audit_days")
    @classmethod
    def _legal_audit_retention(cls, v: int) -> int:
        return check_audit_days(v)
