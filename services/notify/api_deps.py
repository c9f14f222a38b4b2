"""What the routes of notify's HTTP API share, handed to them as a FastAPI dependency (``ctx: Ctx``)
rather than captured in a closure: the :class:`NotifyApi` context (runtime, clock, the notification
store, FHIR base URL and security text) that the composition root puts on ``app.state.notify_api``,
and the audited read. The routes read notifications through the
:class:`~services.notify.ports.NotificationRepository` port that ``app.py`` hands over
(:meth:`NotifyApi.reading`); they never build a store themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify import access
from services.notify.domain import Notification
from services.notify.ports import NotificationRepository
from shared.auth import Caller
from shared.clock import Clock
from shared.runtime import ServiceRuntime


@dataclass
class NotifyApi:
    """The routes' shared dependencies (one per app, on ``app.state.notify_api``)."""

    runtime: ServiceRuntime
    clock: Clock
    #: the notification store on a connection (``app.py``: the SQL repository)
    notifications: Callable[[AsyncConnection], NotificationRepository]
    base_url: str = "http://127.0.0.1:8082"
    security: str = ""

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[NotificationRepository]:
        """The notification store on a connection of its own, for the reads of one request."""
        async with self.runtime.engine.connect() as conn:
            yield self.notifications(conn)

    async def audited(self, caller: Caller | None, n: Notification, what: str) -> bool:
        """May the caller read it; the read is recorded first (permitted or not)."""
        granted = access.basis(caller, n)
        if caller is not None:
            record = access.access_recorded(caller, n, what=what, granted=granted, at=self.clock.now())
            await access.record(self.runtime, [record])
        return granted is not None

    async def search_recorded(self, caller: Caller | None, shown: list[Notification], what: str) -> None:
        """One record per search, as IHE BALP has it: a case's notifications are about one person."""
        if caller is not None and shown:
            n = shown[0]
            record = access.access_recorded(
                caller, n, what=what, granted=access.basis(caller, n), at=self.clock.now(), action="search"
            )
            await access.record(self.runtime, [record])


def notify_api(request: Request) -> NotifyApi:
    """The app's :class:`NotifyApi` (a FastAPI dependency: it adds nothing to the OpenAPI)."""
    context: NotifyApi = request.app.state.notify_api
    return context


Ctx = Annotated[NotifyApi, Depends(notify_api)]
