from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class PlanningSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PLANNING_", extra="ignore")

    http_port: int = 8080
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="How participants reach this service; plan links in invitations use it",
    )
    invitation_deadline_days: int = Field(
        default=3, ge=1, le=30, description="LUS: SIP invitation within N days of ready-for-discharge"
    )
