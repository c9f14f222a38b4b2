"""Composition root of the planning service: the only place that reads settings and builds adapters."""

from __future__ import annotations

from fastapi import FastAPI

from services.planning import api, subscribers
from services.planning.adapters.store import metadata
from services.planning.settings import PlanningSettings
from shared.clock import Clock, SystemClock
from shared.directory import Directory, load_directory
from shared.runtime import ServiceRuntime, serve

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
    serve(SERVICE, PlanningSettings(), create_app)
