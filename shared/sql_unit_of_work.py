"""The unit of work on the service's database (:class:`shared.unit_of_work.UnitOfWork` in SQL).

One transaction (``engine.begin()``) holds the inbox claim, the effect and the outbox rows; the
relay is woken after a commit that sent something. ``ServiceRuntime.unit_of_work()`` returns the plain
one; a service subclasses it to own its repositories (``services/<service>/adapters/unit_of_work.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts import Contract
from shared.persistence import claim_inbox, enqueue

__all__ = ["SqlUnitOfWork"]


class SqlUnitOfWork:
    """One transaction on the service's database: inbox, effect and outbox commit together.

    A service subclasses it and builds its repositories on ``self.conn`` in :meth:`open`.
    ``read_only``: ``engine.connect()`` instead of ``engine.begin()`` (nothing is committed), for a
    read that must not hold a transaction open while its caller waits afterwards.
    """

    conn: AsyncConnection

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        inbox: sa.Table,
        outbox: sa.Table,
        after_send: Callable[[], None] | None = None,
        read_only: bool = False,
    ) -> None:
        self._engine = engine
        self._read_only = read_only
        self._inbox = inbox
        self._outbox = outbox
        self._after_send = after_send
        self.enqueued = 0

    def open(self, conn: AsyncConnection) -> None:
        """Build the repositories on the transaction's connection (a service's subclass)."""

    def join(self, conn: AsyncConnection) -> Self:
        """This unit of work inside a transaction its caller already holds on ``conn``, not entered
        with ``async with``: the caller commits or rolls back, and wakes the relay. For a service's
        reaction to an event it raised itself, made in the transaction that raised it (planning's
        scheduler and its breached deadlines)."""
        self.conn = conn
        self.enqueued = 0
        self.open(conn)
        return self

    async def __aenter__(self) -> Self:
        self._tx = self._engine.connect() if self._read_only else self._engine.begin()
        self.conn = await self._tx.__aenter__()
        self.enqueued = 0
        try:
            self.open(self.conn)
        except BaseException as exc:
            await self._tx.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._tx.__aexit__(exc_type, exc, tb)  # commit, or roll back on an exception
        if exc_type is None and self.enqueued and self._after_send is not None:
            self._after_send()

    async def first_time(self, consumer: str, message_id: str) -> bool:
        return await claim_inbox(self.conn, self._inbox, consumer, message_id)

    async def send(self, message: Contract) -> None:
        await enqueue(self.conn, self._outbox, message)
        self.enqueued += 1
