"""planning's unit of work in SQL: one transaction owning the case repository and the deadlines on
its connection. Its in-memory twin, for handler tests, is
:class:`services.planning.adapters.memory.InMemoryPlanningUnitOfWork`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning.adapters.deadline_store import SqlDeadlines
from services.planning.adapters.store import SqlCaseRepository
from services.planning.handlers import PlanningDeps
from shared.runtime import ServiceRuntime
from shared.sql_unit_of_work import SqlUnitOfWork


class SqlPlanningUnitOfWork(SqlUnitOfWork):
    cases: SqlCaseRepository
    deadlines: SqlDeadlines

    def __init__(self, runtime: ServiceRuntime, deps: PlanningDeps) -> None:
        super().__init__(
            runtime.engine, inbox=runtime.inbox, outbox=runtime.outbox, after_send=runtime.relay.wake
        )
        self.deps = deps

    def open(self, conn: AsyncConnection) -> None:
        self.cases = SqlCaseRepository(conn)
        self.deadlines = SqlDeadlines(conn)
