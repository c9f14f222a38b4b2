"""What every route module of planning's HTTP API shares, handed to the routes as a FastAPI dependency
(``ctx: Ctx``) rather than captured in a closure: the :class:`PlanningApi` context (runtime, settings,
clock, intake, consent gate, directory, deadline policy, and the stores on a connection) that the
composition root puts on ``app.state.planning_api``. The routes reach storage only through it: the
SQL adapters are chosen by ``app.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning.deadlines import DeadlinePolicy
from services.planning.domain import SipCase
from services.planning.intake import IntakeService
from services.planning.ports import CaseStore, DeadlineStore
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
    _: KW_ONLY
    cases: Callable[[AsyncConnection], CaseStore]
    """The case repository on a connection (or a unit of work's: ``ctx.cases(uow.conn)``)."""
    deadlines: Callable[[AsyncConnection], DeadlineStore]
    """The deadlines on a connection (or a unit of work's)."""
    case_from_snapshot: Callable[[str], SipCase]
    """The case as a stored plan version's ``snapshot`` keeps it (the store's format)."""
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
