"""Foreground first: a service's latency-critical work (the hospital intake's store-and-ACK) ahead of its
background work (the outbox relay, consumers, scheduler, metrics) for the database connections.

A service runs all of it on one event loop, and on SQLite on ONE connection (``make_engine``). Without
priority a hospital sender's next message waits for whatever the service does in between — its pool
waiters are served first come first served, and every background transaction that starts while the
message is being stored takes the loop's CPU from it. With :class:`Foreground`:

- work marked foreground (``with foreground.work():``, and every task started inside it) takes the
  next free connection before any background waiter (:class:`PriorityQueue`, the pool's queue);
- background work asking for a connection while foreground work is in flight — or ended less than
  ``grace`` ago: a sender waiting for each answer sends its next message right after it — waits until
  it is not (at most ``max_wait`` seconds each time, so it is slowed, never starved): it gives the
  foreground the CPU as well as the connection (:class:`PriorityPool`).

benchmarks.intake_mllp, 2026-12-04 (README, Hospital intake): over one MLLP connection SQLite went from
p50 4.9 / p99 22 ms to 1.5 / 9.3 ms, PostgreSQL from 4.8 / 9.9 to 2.3 / 8.1 ms; the follow-up work is
done as soon as before, behind the intake instead of before it.

Only a new transaction waits: one in progress runs to its end. Nothing about durability changes — the
same transactions commit in the same way, only their order does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.concurrency import await_, in_greenlet
from sqlalchemy.util.queue import Empty, Full, QueueCommon

#: True in foreground work (and the tasks it starts: a task copies its creator's context)
FOREGROUND: ContextVar[bool] = ContextVar("sip_foreground", default=False)

#: how long one background checkout waits for the foreground at most (seconds)
MAX_WAIT = 0.02
#: background work waits this long after the foreground's last answer, for the sender's next message
GRACE = 0.002


class Foreground:
    """Counts the foreground work in flight; background work waits its turn (:meth:`turn`).

    ``grace``: background work also waits while the foreground ended less than this long ago — a
    sender that waits for each answer sends its next message a fraction of a millisecond after it,
    and a background transaction begun in between would hold the loop (and on SQLite the connection)
    while that message waits. ``max_wait`` bounds each wait: background work is slowed, not starved.
    """

    def __init__(
        self,
        *,
        grace: float = GRACE,
        max_wait: float = MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.max_wait = max_wait
        self._clock = clock
        self.in_flight = 0
        self._ended = -float("inf")
        self._idle: deque[asyncio.Future[None]] = deque()
        #: background checkouts that waited, and how long in all (seconds): tests, benchmarks
        self.background_waits = 0
        self.background_waited = 0.0

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Mark foreground work in flight for the block; the block (and what it starts) is foreground."""
        self.in_flight += 1
        token = FOREGROUND.set(True)
        try:
            yield
        finally:
            FOREGROUND.reset(token)
            self.in_flight -= 1
            if not self.in_flight:
                self._ended = self._clock()
                while self._idle:
                    waiter = self._idle.popleft()
                    if not waiter.done():
                        waiter.set_result(None)

    def busy(self) -> bool:
        """Is foreground work in flight (or just ended) that the caller — not foreground itself —
        should let go first?"""
        if FOREGROUND.get():
            return False
        return self.in_flight > 0 or self._clock() - self._ended < self.grace

    async def turn(self) -> None:
        """Background: wait until no foreground work is in flight or just ended, at most ``max_wait``."""
        if not self.busy():
            return
        start = self._clock()
        deadline = start + self.max_wait
        loop = asyncio.get_running_loop()
        try:
            while self.busy():
                now = self._clock()
                if now >= deadline:
                    return
                if self.in_flight:
                    waiter = loop.create_future()
                    self._idle.append(waiter)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, deadline - now)
                else:
                    await asyncio.sleep(min(deadline, self._ended + self.grace) - now)
        finally:
            self.background_waits += 1
            self.background_waited += self._clock() - start


class PriorityQueue(QueueCommon[Any]):
    """The pool's queue of idle connections: a free connection goes to a waiting foreground checkout
    before any background one (first come first served within each), and a background checkout does
    not take one from under a waiting foreground checkout."""

    foreground: Foreground  # set on the subclass made by :func:`priority_pool`

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._items: deque[Any] = deque()
        self._waiters: dict[bool, deque[asyncio.Future[Any]]] = {True: deque(), False: deque()}

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # the pool only returns connections it took: never more than maxsize

    def put_nowait(self, item: Any) -> None:
        if self.full():
            raise Full()
        for foreground in (True, False):
            waiters = self._waiters[foreground]
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(item)  # handed over: nobody can take it in between
                    return
        self._items.append(item)

    def get_nowait(self) -> Any:
        if not self._items or (self._waiters[True] and not FOREGROUND.get()):
            raise Empty()
        return self._items.pop() if self.use_lifo else self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return self.get_nowait()
        except Empty:
            if not block:
                raise
        return await_(self._wait(timeout))

    async def _wait(self, timeout: float | None) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[FOREGROUND.get()].append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if waiter.done():  # handed over as the time ran out: take it
                return waiter.result()
            waiter.cancel()
            raise Empty() from None
        except BaseException:  # cancelled: a connection handed over goes back to the queue
            if waiter.done() and not waiter.cancelled():
                self.put_nowait(waiter.result())
            waiter.cancel()
            raise


class PriorityPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` with foreground first (:class:`PriorityQueue`, :meth:`Foreground.turn`)."""

    foreground: Foreground  # set on the subclass made by :func:`priority_pool`

    def _do_get(self) -> Any:
        if self.foreground.busy() and in_greenlet():
            await_(self.foreground.turn())
        return super()._do_get()


def priority_pool(foreground: Foreground | None = None) -> type[PriorityPool]:
    """A pool class for one engine (``create_async_engine(..., poolclass=priority_pool())``): its
    instances — and those ``engine.dispose()`` makes anew — share one :class:`Foreground`."""
    fg = foreground or Foreground()
    queue = type("EnginePriorityQueue", (PriorityQueue,), {"foreground": fg})
    return type("EnginePriorityPool", (PriorityPool,), {"foreground": fg, "_queue_class": queue})


def foreground_of(engine: Any) -> Foreground:
    """The engine's :class:`Foreground` (a private one, which nothing waits for, if its pool has none)."""
    pool = getattr(getattr(engine, "sync_engine", engine), "pool", None)
    found = getattr(pool, "foreground", None)
    return found if isinstance(found, Foreground) else Foreground()
