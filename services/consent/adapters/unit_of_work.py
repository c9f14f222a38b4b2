"""consent's unit of work in SQL: one transaction owning the consent repository on its connection.

Its in-memory twin, for handler tests, is :class:`services.consent.adapters.memory.InMemoryConsentUnitOfWork`.
The audit writer is not part of it: the decisions' audit records are group-committed by
:class:`~services.consent.adapters.store.AuditWriter` on connections of their own, on purpose.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.consent.adapters.store import SqlConsentRepository
from services.consent.handlers import ConsentDeps
from shared.runtime import ServiceRuntime
from shared.sql_unit_of_work import SqlUnitOfWork


class SqlConsentUnitOfWork(SqlUnitOfWork):
    consents: SqlConsentRepository

    def __init__(self, runtime: ServiceRuntime, deps: ConsentDeps) -> None:
        super().__init__(
            runtime.engine, inbox=runtime.inbox, outbox=runtime.outbox, after_send=runtime.relay.wake
        )
        self.deps = deps

    def open(self, conn: AsyncConnection) -> None:
        self.consents = SqlConsentRepository(conn)
