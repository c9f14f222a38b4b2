"""Typed settings shared by the services.

Each service reads its own prefix first (``PLANNING_``, ``CONSENT_``, ``NOTIFY_``) and falls back to
``SIP_`` for the settings every service has, so one ``SIP_AMQP_URL`` serves the whole suite.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from shared.broker_urls import amqp_urls


class ServiceSettings(BaseSettings):
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL (amqps:// for TLS); a cluster's nodes as several URLs, comma separated",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty = SQLite file under data_dir",
    )
    data_dir: str = Field(default="var", description="Where SQLite files live")
    sqlite_driver: str = Field(
        default="inline",
        description="SQLite only: inline = statements run on the event loop's thread (one connection "
        "per process; a BEGIN that waits for another process waits in a worker thread) | thread = "
        "aiosqlite, a worker-thread round trip per call (several times the CPU per statement)",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=200,
        description="PostgreSQL only: connections each service process keeps open (and never more): "
        "its consumers, relay, scheduler or dispatcher and API wait for a free one rather than open "
        "and close server processes under load",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 0
    prefetch: int = Field(default=32, ge=1, le=1000, description="RabbitMQ prefetch per channel")
    max_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts at a failing message before its DLQ"
    )
    retry_delay_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a failed message waits in its retry queue (the same for the whole suite)",
    )
    dependency_backoff_initial_seconds: float = Field(
        default=0.5,
        gt=0,
        description="A dependency (database, broker, SMTP) found unavailable is tried again after this "
        "long, then twice as long each time, up to dependency_backoff_max_seconds",
    )
    dependency_backoff_max_seconds: float = Field(
        default=120.0,
        gt=0,
        description="The longest wait between tries of an unavailable dependency (the backoff's cap)",
    )
    dependency_hold_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a message that met an unavailable dependency is held unacknowledged "
        "before it is parked in its retry queue (its retry budget untouched; keep below the broker's "
        "consumer_timeout)",
    )
    directory_path: str = Field(default="config/directory.yaml", description="Organisation directory file")
    fault_duplicate_publish: bool = Field(
        default=False,
        description="Fault injection for tests: publish every outgoing message twice. Never in production.",
    )
    otel_exporter: str = Field(
        default="none",
        description="Where OpenTelemetry spans go: none | console | file | otlp (otlp needs the package "
        "opentelemetry-exporter-otlp-proto-http and reads the standard OTEL_EXPORTER_OTLP_* variables)",
    )
    otel_file: str = Field(
        default="",
        description="JSON-lines span file for otel_exporter=file ({service} = the service name); "
        "empty = <data_dir>/spans-<service>.jsonl",
    )
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json | text")
    tls_certfile: str = Field(
        default="", description="PEM certificate chain: serve HTTPS (and MLLP over TLS in planning) with it"
    )
    tls_keyfile: str = Field(default="", description="PEM private key of tls_certfile")
    auth_required: bool = Field(
        default=True,
        description="Every HTTP caller must send a bearer JWT naming its organisation (hsa_id). "
        "false only for a local sandbox: the acting organisation is then taken from X-Sip-Organisation",
    )
    jwt_issuers_file: str = Field(
        default="", description="Trusted token issuers: YAML/JSON {issuer: {public_key_pem, algorithms}}"
    )
    jwt_hs256_secret: SecretStr | None = Field(
        default=None, description="Shared HMAC secret for HS256 tokens — development and tests only"
    )
    jwt_audience: str = Field(default="sip-suite", description="The aud claim tokens must carry")

    # ---- retention (shared/retention.py): each service prunes its own tables on a schedule ----
    retention_inbox_days: int = Field(
        default=30,
        ge=7,
        description="Processed message ids (the inbox) are kept this many days: longer than any copy of a "
        "message can still arrive (retries, a consumer down for days); at least 7",
    )
    retention_outbox_days: int = Field(
        default=7, ge=1, description="Outbox rows are deleted this many days after the broker confirmed them"
    )
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="Seconds between two retention passes of a service"
    )
    retention_batch: int = Field(
        default=500, ge=1, le=10000, description="Rows pruned per transaction (one batch)"
    )
    retention_batch_seconds: float = Field(
        default=0.01, ge=0, le=10,
        description="SQLite: how long one batch's transaction (which holds the write lock) should take;"
        " the batch is sized to it, up to retention_batch rows (0, and on PostgreSQL: retention_batch rows)",
    )  # fmt: skip
    retention_pause_seconds: float = Field(
        default=0.01, ge=0, le=60,
        description="Pause between two batches, so the live path is not stalled (at least three times as"
        " long as the batch took)",
    )  # fmt: skip

    @field_validator("amqp_url")
    @classmethod
    def _no_placeholder(cls, v: str) -> str:
        if "CHANGE_ME" in v:
            raise ValueError("amqp_url still holds a placeholder")
        amqp_urls(v)  # each address an amqp:// or amqps:// URL
        return v

    @field_validator("sqlite_driver")
    @classmethod
    def _known_sqlite_driver(cls, v: str) -> str:
        v = (v or "inline").strip().lower()
        if v not in ("inline", "thread"):
            raise ValueError("sqlite_driver must be inline or thread")
        return v

    @field_validator("otel_exporter")
    @classmethod
    def _known_exporter(cls, v: str) -> str:
        v = (v or "none").strip().lower()
        if v not in ("none", "console", "file", "otlp"):
            raise ValueError("otel_exporter must be none, console, file or otlp")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        suite = EnvSettingsSource(settings_cls, env_prefix="SIP_", case_sensitive=False)
        return (init_settings, env_settings, suite, dotenv_settings, file_secret_settings)

    def sqlalchemy_url(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir}/{service}.db"

    def span_file(self, service: str) -> str:
        return (self.otel_file or f"{self.data_dir}/spans-{{service}}.jsonl").replace("{service}", service)

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print (credentials masked)."""
        out = self.model_dump()
        for key, value in out.items():
            if isinstance(value, str) and "://" in value and "@" in value:
                scheme, rest = value.split("://", 1)
                out[key] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return out
