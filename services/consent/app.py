"""Composition root of the consent service: the only place that reads settings and builds adapters."""

from __future__ import annotations

from fastapi import FastAPI

from services.consent import api, subscribers
from services.consent.adapters.store import metadata
from services.consent.settings import ConsentSettings
from shared.clock import Clock, SystemClock
from shared.runtime import ServiceRuntime, serve

SERVICE = "consent"


def create_app(settings: ConsentSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or ConsentSettings()
    clock = clock or SystemClock()
    runtime = ServiceRuntime(SERVICE, settings, metadata)
    subscribers.register(runtime, clock)
    app = FastAPI(
        title="sip-suite consent",
        version="0.1.0",
        description="Records the person's (or guardians') consent to a SIP and publishes the decision.",
        lifespan=runtime.lifespan,
    )
    runtime.add_health_routes(app)
    app.include_router(api.build_router(runtime, clock))
    app.state.runtime = runtime
    return app


def main() -> None:
    serve(SERVICE, ConsentSettings(), create_app)
