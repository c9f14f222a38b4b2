"""Composition root of the notify service: the only place that reads settings and builds adapters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI

from services.notify import api, subscribers
from services.notify.adapters.http_channels import SmsGatewaySender, WebhookChannelSender, WebhookSecrets
from services.notify.adapters.retention import notify_kinds
from services.notify.adapters.smtp import EmailChannelSender, SmtpEmailSender
from services.notify.adapters.store import SqlNotificationRepository, metadata, notifications, upgrade_schema
from services.notify.adapters.unit_of_work import SqlNotifyUnitOfWork
from services.notify.api_deps import NotifyApi
from services.notify.dispatcher import Dispatcher
from services.notify.handlers.routing import InvitationOptions
from services.notify.handlers.table import NotifyDeps
from services.notify.ports import ChannelSender, EmailSender
from services.notify.settings import NotifySettings
from shared import fhir_rest, retention
from shared.clock import Clock, SystemClock
from shared.directory import load_directory
from shared.metrics import status_gauge
from shared.runtime import ServiceRuntime, serve

SERVICE = "notify"


def create_app(
    settings: NotifySettings | None = None,
    *,
    clock: Clock | None = None,
    sender: EmailSender | None = None,
    channels: Mapping[str, ChannelSender] | None = None,
    webhook_secrets: WebhookSecrets | None = None,
) -> FastAPI:
    """``sender`` replaces the SMTP sender; ``channels`` replaces any channel (by kind)."""
    settings = settings or NotifySettings()
    clock = clock or SystemClock()
    smtp: SmtpEmailSender | None = None
    if sender is None:
        sender = smtp = SmtpEmailSender(settings)
    secrets = webhook_secrets or WebhookSecrets.load(file=settings.webhook_secrets_file)
    token = settings.sms_gateway_token.get_secret_value() if settings.sms_gateway_token else None
    all_channels: dict[str, ChannelSender] = {
        "email": EmailChannelSender(sender),
        "webhook": WebhookChannelSender(secrets, timeout=settings.http_timeout),
        "sms": SmsGatewaySender(url=settings.sms_gateway_url, token=token, timeout=settings.http_timeout),
        **(channels or {}),
    }
    runtime = ServiceRuntime(SERVICE, settings, metadata, migrations=Path(__file__).parent / "migrations")
    prepare_models = runtime.prepare_database

    async def prepare_database() -> None:
        """PostgreSQL: the migrations; SQLite: the models, then the columns newer than its tables."""
        await prepare_models()
        if runtime.engine.dialect.name != "postgresql":
            async with runtime.engine.begin() as conn:
                await conn.run_sync(upgrade_schema)

    runtime.prepare_database = prepare_database  # type: ignore[method-assign]
    runtime.metrics.add_db_collector(
        status_gauge("sip_notify_notifications", "Notifications by status and channel", notifications,
                     "status", "channel")
    )  # fmt: skip
    deps = NotifyDeps(load_directory(settings.directory_path), clock, InvitationOptions.of(settings))
    dispatcher = Dispatcher(runtime, all_channels, clock, settings, notifications=SqlNotificationRepository)
    subscribers.register(
        runtime,
        dispatcher,
        uow=lambda: SqlNotifyUnitOfWork(runtime, deps),
        reader=lambda: SqlNotifyUnitOfWork(runtime, deps, read_only=True),
        settings=settings,
    )
    runtime.background.append(dispatcher.run)
    pruner = retention.install(runtime, notify_kinds(runtime.inbox, runtime.outbox, settings), now=clock.now)
    if smtp is not None:  # closes idle SMTP connections, and all of them at shutdown
        runtime.background.append(smtp.run)
    app = FastAPI(
        title="sip-suite notify",
        version="0.1.0",
        description=(
            "Sends SIP notifications (e-mail with a calendar invitation, signed FHIR webhook, SMS) to "
            "participating organisations; no personal data. Every delivery is a FHIR Communication."
        ),
        lifespan=runtime.lifespan,
    )
    runtime.add_health_routes(app)
    app.state.notify_api = NotifyApi(
        runtime,
        clock,
        notifications=SqlNotificationRepository,
        base_url=settings.fhir_base_url,
        security=fhir_rest.security_text(settings),
    )
    app.include_router(api.router)
    fhir_rest.install(app)
    app.state.runtime = runtime
    app.state.pruner = pruner
    app.state.dispatcher = dispatcher
    return app


def main() -> None:
    serve(SERVICE, NotifySettings(), create_app)
