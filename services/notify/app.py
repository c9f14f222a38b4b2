"""Composition root of the notify service: the only place that reads settings and builds adapters."""

from __future__ import annotations

from fastapi import FastAPI

from services.notify import api, subscribers
from services.notify.adapters.smtp import SmtpEmailSender
from services.notify.adapters.store import metadata
from services.notify.dispatcher import Dispatcher
from services.notify.ports import EmailSender
from services.notify.settings import NotifySettings
from shared.clock import Clock, SystemClock
from shared.directory import load_directory
from shared.runtime import ServiceRuntime, serve

SERVICE = "notify"


def create_app(
    settings: NotifySettings | None = None,
    *,
    clock: Clock | None = None,
    sender: EmailSender | None = None,
) -> FastAPI:
    settings = settings or NotifySettings()
    clock = clock or SystemClock()
    sender = sender or SmtpEmailSender(settings)
    runtime = ServiceRuntime(SERVICE, settings, metadata)
    directory = load_directory(settings.directory_path)
    dispatcher = Dispatcher(runtime, sender, clock, settings)
    subscribers.register(runtime, directory, dispatcher, clock)
    runtime.background.append(dispatcher.run)
    app = FastAPI(
        title="sip-suite notify",
        version="0.1.0",
        description="Sends SIP invitations (e-mail) to participating organisations; no personal data.",
        lifespan=runtime.lifespan,
    )
    runtime.add_health_routes(app)
    app.include_router(api.build_router(runtime))
    app.state.runtime = runtime
    app.state.dispatcher = dispatcher
    return app


def main() -> None:
    serve(SERVICE, NotifySettings(), create_app)
