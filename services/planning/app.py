"""Composition root of the planning service: the only place that reads settings and builds adapters."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from services.planning import api, subscribers
from services.planning.adapters.store import metadata
from services.planning.settings import PlanningSettings
from shared.clock import Clock, SystemClock
from shared.directory import Directory, load_directory
from shared.logs import configure_logging
from shared.runtime import ServiceRuntime

SERVICE = "planning"


def create_app(
    settings: PlanningSettings | None = None,
    *,
    clock: Clock | None = None,
    directory: Directory | None = None,
) -> FastAPI:
    settings = settings or PlanningSettings()
    clock = clock or SystemClock()
    directory = directory or load_directory(settings.directory_path)
    runtime = ServiceRuntime(SERVICE, settings, metadata)
    subscribers.register(runtime, settings, directory, clock)
    app = FastAPI(
        title="sip-suite planning",
        version="0.1.0",
        description="Opens SIP cases from hospital discharges, keeps their deadlines and serves each "
        "plan as FHIR R4 CarePlan.",
        lifespan=runtime.lifespan,
    )
    runtime.add_health_routes(app)
    app.include_router(api.build_router(runtime, settings, clock))
    app.state.runtime = runtime
    return app


def main() -> None:
    settings = PlanningSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None)
