"""notify's unit of work in SQL: one transaction owning the notification repository on its connection.

Its in-memory twin, for handler tests, is :class:`services.notify.adapters.memory.InMemoryNotifyUnitOfWork`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.adapters.store import SqlNotificationRepository
from services.notify.handlers.table import NotifyDeps
from shared.runtime import ServiceRuntime
from shared.sql_unit_of_work import SqlUnitOfWork


class SqlNotifyUnitOfWork(SqlUnitOfWork):
    notifications: SqlNotificationRepository

    def __init__(self, runtime: ServiceRuntime, deps: NotifyDeps, *, read_only: bool = False) -> None:
        super().__init__(
            runtime.engine,
            inbox=runtime.inbox,
            outbox=runtime.outbox,
            after_send=runtime.relay.wake,
            read_only=read_only,
        )
        self.deps = deps

    def open(self, conn: AsyncConnection) -> None:
        self.notifications = SqlNotificationRepository(conn)
