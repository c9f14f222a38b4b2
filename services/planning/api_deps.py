"""What every route module of planning's HTTP API shares, handed to the routes as a FastAPI dependency
(``ctx: Ctx``) rather than captured in a closure: the :class:`PlanningApi` context (runtime, settings,
clock, intake, consent gate, directory, deadline policy) that the composition root puts on
``app.state.planning_api``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from services.planning.deadlines import DeadlinePolicy
from services.planning.intake import IntakeService
from services.planning.settings import PlanningSettings
from shared.clock import Clock
from shared.consent_gate import ConsentGateClient
from shared.directory import Directory
from shared.runtime import ServiceRuntime


def no_gate() -> ConsentGateClient | None:
    return None


@dataclass
class PlanningApi:
    """The routes' shared dependencies (one per app, on ``app.state.planning_api``)."""

    runtime: ServiceRuntime
    settings: PlanningSettings
    clock: Clock
    intake: IntakeService
    directory: Directory
    gate: Callable[[], ConsentGateClient | None] = no_gate
    """The consent gate (made on first use by the composition root)."""
    policy: DeadlinePolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = DeadlinePolicy.from_settings(self.settings)

    @property
    def web_base_url(self) -> str:
        """The human link in invitations and notices."""
        return self.settings.web_base_url

    @property
    def base_url(self) -> str:
        """The public base URL (the FHIR base is ``{base_url}/fhir``)."""
        return self.settings.public_base_url.rstrip("/")


def planning_api(request: Request) -> PlanningApi:
    """The app's :class:`PlanningApi` (a FastAPI dependency: it adds nothing to the OpenAPI)."""
    context: PlanningApi = request.app.state.planning_api
    return context


Ctx = Annotated[PlanningApi, Depends(planning_api)]
