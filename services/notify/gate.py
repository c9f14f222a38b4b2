"""The send gate: makes a consent withdrawal win every race against the dispatcher (issue #4).

One readers–writer lock per SIP case, in the notify process:

- **shared** (:meth:`SendGate.sending`) — the dispatcher, for one claimed notification: check the
  status again, hand it to the channel, record the outcome. Many sends of one case run at once.
- **exclusive** (:meth:`SendGate.stopping`) — a withdrawal, around its transaction (cancel what is
  unsent, plan the notices, inbox mark). It waits until the sends that already passed their check
  are over (delivered and recorded, or failed and rescheduled) and, while it waits or holds the gate,
  no new send of that case starts (writer preference). When it releases, every claimed notification
  of the case finds ``cancelled`` at its check and sends nothing.

So no notification of a case is handed to a channel after the withdrawal committed, and one whose
send was in progress is recorded truthfully as ``sent`` (it was delivered before the withdrawal).

The gate lives in memory: it covers one notify process. Several notify replicas may share a
database (the dispatcher's claims carry a lease, see :mod:`services.notify.dispatcher`), but the gate
does not span them: a send that passed its check on one replica can still go out while another
replica commits the withdrawal. Closing that would take the same rule in the database (on
PostgreSQL ``SELECT … FOR SHARE`` on the row across the send and its recording, which the cancel's
``SELECT … FOR UPDATE`` then waits for) — not done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field


@dataclass
class _State:
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    readers: int = 0
    writer: bool = False
    writers_waiting: int = 0
    users: int = 0


class SendGate:
    def __init__(self) -> None:
        self._states: dict[Hashable, _State] = {}

    def _enter(self, key: Hashable) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
        state.users += 1
        return state

    def _leave(self, key: Hashable, state: _State) -> None:
        state.users -= 1
        if state.users == 0 and self._states.get(key) is state:
            del self._states[key]

    @contextlib.asynccontextmanager
    async def sending(self, key: Hashable) -> AsyncIterator[None]:
        """Shared: one send (check, deliver, record) of a notification of case ``key``."""
        state = self._enter(key)
        try:
            async with state.cond:
                await state.cond.wait_for(lambda: not state.writer and state.writers_waiting == 0)
                state.readers += 1
            try:
                yield
            finally:
                async with state.cond:
                    state.readers -= 1
                    state.cond.notify_all()
        finally:
            self._leave(key, state)

    @contextlib.asynccontextmanager
    async def stopping(self, key: Hashable) -> AsyncIterator[None]:
        """Exclusive: wait for the sends of case ``key`` in progress, hold off new ones."""
        state = self._enter(key)
        try:
            async with state.cond:
                state.writers_waiting += 1
                try:
                    await state.cond.wait_for(lambda: not state.writer and state.readers == 0)
                finally:
                    state.writers_waiting -= 1
                    state.cond.notify_all()
                state.writer = True
            try:
                yield
            finally:
                async with state.cond:
                    state.writer = False
                    state.cond.notify_all()
        finally:
            self._leave(key, state)

    @contextlib.asynccontextmanager
    async def stopping_all(self, keys: list[Hashable]) -> AsyncIterator[None]:
        """:meth:`stopping` for several cases (taken in a fixed order)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys), key=str):
                await stack.enter_async_context(self.stopping(key))
            yield

    def busy(self, key: Hashable) -> tuple[int, bool]:
        """(sends in progress, withdrawal holding or waiting) for case ``key`` — for tests."""
        state = self._states.get(key)
        if state is None:
            return (0, False)
        return (state.readers, state.writer or state.writers_waiting > 0)
