from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class WebSettings(ServiceSettings):
    """The web service's settings (``WEB_…``, falling back to ``SIP_…``). It keeps no database and uses
    no broker: it reads through the other services' HTTP APIs with the signed-in user's token."""

    model_config = SettingsConfigDict(env_prefix="WEB_", extra="ignore", populate_by_name=True)

    http_port: int = 8083
    public_base_url: str = Field(
        default="http://localhost:8083",
        description="How browsers reach the pages; the OIDC redirect URI is <this>/callback",
    )
    planning_url: str = Field(default="http://127.0.0.1:8080", description="planning's HTTP API")
    consent_url: str = Field(default="http://127.0.0.1:8081", description="consent's HTTP API")
    notify_url: str = Field(default="http://127.0.0.1:8082", description="notify's HTTP API")
    api_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of one API call")

    staff_issuer: str = Field(
        default="", description="Staff sign-in: the organisation IdP's OIDC issuer (empty = no staff sign-in)"
    )
    staff_client_id: str = ""
    staff_client_secret: SecretStr | None = None
    staff_hsa_claim: str = Field(default="hsa_id", description="The claim that carries the HSA-id")
    citizen_issuer: str = Field(
        default="", description="Citizen sign-in: the e-ID provider's OIDC issuer (empty = none)"
    )
    citizen_client_id: str = ""
    citizen_client_secret: SecretStr | None = None
    citizen_person_claim: str = Field(
        default="personal_identity_number", description="The claim that carries the personnummer"
    )
    oidc_scope: str = Field(default="openid", description="Scopes asked for at sign-in")
    oidc_resource: str = Field(
        default="",
        description="Resource indicator (RFC 8707) sent at sign-in, so the provider issues a JWT access "
        "token for the suite's APIs (empty = not sent)",
    )

    session_cookie_secure: bool = Field(
        default=True,
        description="The session cookie's Secure flag; false only for http://localhost development",
    )
    session_idle_minutes: int = Field(
        default=30, ge=1, le=720, description="A session unused this long ends (shared office PCs)"
    )
    session_max_hours: int = Field(
        default=10, ge=1, le=24, description="A session ends this long after sign-in"
    )
    dev_signin: bool = Field(
        default=False,
        validation_alias=AliasChoices("WEB_DEV_SIGNIN", "SIP_WEB_DEV_SIGNIN", "dev_signin"),
        description="Development sign-in for `make run` only: pick an organisation or a test person, "
        "a token is minted with the development secret. Never in production.",
    )
    support_contact: str = Field(
        default="Kontakta den enhet som äger ärendet, eller regionens kundtjänst.",
        description="Whom to contact, shown on refusal pages",
    )
