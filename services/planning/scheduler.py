"""The deadline scheduler: escalates every deadline that passed unmet, exactly once.

All its state is in the database (``case_deadlines``), so it survives restarts: a deadline that fell
due while planning was down is escalated on the first pass after the start. Each pass claims the
overdue deadlines and, in the same transaction, enqueues one ``planning.deadline-breached.v1`` per
deadline in the outbox (for notify, who escalates to the owning unit; the relay publishes after
commit) and makes planning's own reaction to it (``react``: a follow-up that came due) — in-process,
not through RabbitMQ, so the breach and its effect on the case commit together. Several planning
replicas may run it: a deadline is claimed by exactly one (the store's ``claim_due``, the port
:class:`~services.planning.ports.DueDeadlines` on the pass's connection), and the breach's
``message_id`` is derived from (case, kind, cycle) — the outbox's unique ``message_id`` refuses a
second one even if a claim were ever repeated.

Register it in ``app.py``, which hands it the store: ``runtime.background.append(scheduler_job(runtime,
clock, settings.deadline_check_interval, deadlines=SqlDeadlines, react=...))``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.planning.deadlines import Deadline, breach_message_id
from services.planning.ports import DueDeadlines
from shared.clock import Clock
from shared.contracts import DeadlineBreached
from shared.persistence import enqueue
from shared.runtime import ServiceRuntime

log = logging.getLogger("sip.planning.deadlines")


def breach_message(deadline: Deadline) -> DeadlineBreached:
    """The escalation of one breached deadline. No personal data: ids, kind, times, the owner's HSA-id."""
    assert deadline.breached_at is not None and deadline.escalated_to is not None
    return DeadlineBreached(
        message_id=breach_message_id(deadline.case_id, deadline.kind, deadline.cycle),
        occurred_at=deadline.breached_at,
        correlation_id=deadline.correlation_id,
        case_id=deadline.case_id,
        case_reference=deadline.case_reference,
        kind=deadline.kind,
        due_at=deadline.due_at,
        breached_at=deadline.breached_at,
        owner_hsa_id=deadline.escalated_to,
    )


React = Callable[[AsyncConnection, DeadlineBreached], Awaitable[None]]
"""planning's own reaction to a breach, run on the pass's connection inside its transaction."""

DeadlinesOn = Callable[[AsyncConnection], DueDeadlines]
"""The deadline store on a connection (``app.py`` hands it ``SqlDeadlines``)."""


async def escalate_due(
    engine: AsyncEngine,
    outbox: sa.Table,
    clock: Clock,
    *,
    deadlines: DeadlinesOn,
    batch: int = 100,
    wake: Callable[[], None] | None = None,
    react: React | None = None,
) -> list[DeadlineBreached]:
    """One pass: every deadline due by ``clock.now()`` → breached + ``DeadlineBreached`` in the outbox
    (+ ``react`` to it, in the same transaction).

    One transaction per batch of ``batch`` deadlines; returns the messages this pass enqueued.
    """
    sent: list[DeadlineBreached] = []
    while True:
        now = clock.now()
        async with engine.begin() as conn:
            claimed = await deadlines(conn).claim_due(now, limit=batch)
            messages = [breach_message(d) for d in claimed]
            for message in messages:
                await enqueue(conn, outbox, message)
                if react is not None:
                    await react(conn, message)
        if messages and wake is not None:
            wake()
        for d in claimed:
            log.warning(
                "deadline breached; escalated to the owning unit",
                extra={
                    "case_id": str(d.case_id),
                    "kind": d.kind,
                    "cycle": d.cycle,
                    "due_at": d.due_at.isoformat(),
                    "owner_hsa_id": d.escalated_to,
                },
            )
        sent.extend(messages)
        if len(claimed) < batch:
            return sent


async def run_scheduler(
    runtime: ServiceRuntime,
    clock: Clock,
    interval: float,
    *,
    deadlines: DeadlinesOn,
    batch: int = 100,
    react: React | None = None,
) -> None:
    """Scan every ``interval`` seconds until cancelled (``ServiceRuntime.stop`` cancels it)."""
    log.info("deadline scheduler started", extra={"interval": interval})
    while True:
        try:
            await escalate_due(
                runtime.engine, runtime.outbox, clock, deadlines=deadlines, batch=batch,
                wake=runtime.relay.wake, react=react,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the scheduler must outlive database hiccups; the next pass retries
            dependency = runtime.dependencies.report(exc)
            if dependency is None:
                log.exception("deadline scan failed; will retry")
            else:  # an outage: logged once by the monitor, waited out with its backoff
                await runtime.dependencies.wait(dependency)
                continue
        await asyncio.sleep(interval)


def scheduler_job(
    runtime: ServiceRuntime,
    clock: Clock,
    interval: float,
    *,
    deadlines: DeadlinesOn,
    react: React | None = None,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """The scheduler as a ``runtime.background`` job."""
    return functools.partial(run_scheduler, runtime, clock, interval, deadlines=deadlines, react=react)
