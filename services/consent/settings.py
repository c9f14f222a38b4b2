from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENT_", extra="ignore")

    http_port: int = 8081
    fhir_base_url: str = Field(
        default="http://127.0.0.1:8081",
        description="How clients reach this service's FHIR API: absolute links (fullUrl, paging) are made "
        "from it (a name of its own: SIP_PUBLIC_BASE_URL is planning's)",
    )
