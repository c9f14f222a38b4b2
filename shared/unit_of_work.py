"""The unit of work every service's handlers get: one transaction, its inbox mark and its outbox.

A handler is called as ``handler(uow, message)`` (:mod:`shared.handler_table`) and touches the world
only through ``uow``: the service's repositories (attributes a service's subclass adds), ``send`` (the
outbox: published after commit) and ``first_time`` (the inbox: a redelivered message is taken once).
``async with uow:`` commits on a normal exit and rolls back when an exception leaves the block.

Two implementations of the same contract, chosen once in a service's ``app.py`` (or a test):

- :class:`shared.sql_unit_of_work.SqlUnitOfWork` — one database transaction (``engine.begin()``)
  holding the inbox claim, the effect and the outbox rows; the relay is woken after a commit that sent;
- :class:`InMemoryUnitOfWork` — dictionaries and lists, for handler tests without a broker or a
  database. A rollback restores the state taken at ``__aenter__`` (:meth:`InMemoryUnitOfWork.snapshot`).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from shared.contracts import Contract

__all__ = ["Handler", "HandlerTable", "InMemoryUnitOfWork", "UnitOfWork"]


class UnitOfWork(Protocol):
    """What the generic subscriber and every handler rely on."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def first_time(self, consumer: str, message_id: str) -> bool:
        """Claim ``message_id`` for ``consumer``; False means it was already processed."""
        ...

    async def send(self, message: Contract) -> None:
        """Put ``message`` in the outbox: it is published after (and only if) the work commits."""
        ...


U = TypeVar("U", bound=UnitOfWork)

#: a handler: ``await handler(uow, message)`` — the unit of work and the message, nothing else
Handler = Callable[[U, Any], Awaitable[object]]
#: contract → handler (a service's ``COMMAND_HANDLERS`` and ``EVENT_HANDLERS``), see shared.handler_table
HandlerTable = Mapping[type[Contract], Handler[U]]


class InMemoryUnitOfWork:
    """The same contract on plain Python objects, for handler tests (no broker, no database).

    One object serves every message of a test (``async with uow:`` again for each). ``sent`` holds
    what was committed to the outbox, ``commits`` counts the committed units. A service's subclass
    adds its in-memory repositories and includes their state in :meth:`snapshot` / :meth:`restore`.
    """

    def __init__(self) -> None:
        self.inbox: set[tuple[str, str]] = set()
        self.sent: list[Contract] = []
        self.commits = 0
        self._before: Any = None

    def snapshot(self) -> Any:
        """The state a rollback returns to (a deep copy); a subclass adds its repositories'."""
        return copy.deepcopy((self.inbox, self.sent))

    def restore(self, state: Any) -> None:
        self.inbox, self.sent = state

    async def __aenter__(self) -> Self:
        self._before = self.snapshot()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.restore(self._before)
        else:
            self.commits += 1
        self._before = None

    async def first_time(self, consumer: str, message_id: str) -> bool:
        if (consumer, message_id) in self.inbox:
            return False
        self.inbox.add((consumer, message_id))
        return True

    async def send(self, message: Contract) -> None:
        self.sent.append(message)
