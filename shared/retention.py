"""Retention: what each service prunes, after how long, and the loop that does it.

Every service's tables grow with the work: planning's intake messages (the raw HL7/FHIR/JSON as
received, kept as evidence), notify's rendered notifications, consent's AuditEvents, and every
service's inbox (processed message ids) and outbox (published messages). Each kind is pruned on its
own schedule (``SIP_RETENTION_*``), in small batches so the live path never waits long:

- a batch is one transaction that picks at most ``batch`` keys (oldest first; on PostgreSQL with
  ``FOR UPDATE SKIP LOCKED``, so replicas never wait for each other and a row is taken by one) and
  deletes or blanks them by primary key — idempotent, so a pass cut short or run twice by two replicas
  loses nothing and prunes nothing twice; between batches the loop sleeps ``pause`` seconds (on SQLite
  the write lock is free then for the live path);
- what is kept is decided by the candidate query of each kind (e.g. only intake messages whose effects
  are complete, only notifications sent or cancelled), so a row the live path still needs is never a
  candidate;
- AuditEvents (and every other access log) are never pruned with messages: they have a retention of
  their own that may not be shorter than the law's five years (HSLF-FS 2016:40, 4 kap. 9 §), refused
  at start when set lower; the cutoff is also never later than five calendar years ago.

Each pass logs one line with the counts per kind (never a row's content) and adds them to
``sip_retention_pruned_total{kind}``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.persistence import utcnow

log = logging.getLogger("sip.retention")

#: HSLF-FS 2016:40, 4 kap. 9 §: access logs are kept for at least five years (5 × 365 + 1 leap day)
AUDIT_MINIMUM_DAYS = 1826
#: the audit default: the legal minimum with a day's margin (five years may hold two leap days)
AUDIT_DEFAULT_DAYS = 1827
#: an inbox row must outlive every copy of its message that may still arrive: the retries
#: (SIP_MAX_ATTEMPTS × SIP_RETRY_DELAY_SECONDS, minutes), an outbox claim that expired (seconds), a
#: message held through a dependency outage (SIP_DEPENDENCY_HOLD_MAX_SECONDS) and a consumer that was
#: down for days with its queue filling. A week is the floor; the default is 30 days.
INBOX_MINIMUM_DAYS = 7

Keys = Sequence[sa.Row[Any]]

#: the first batch of a kind (then sized by time: :meth:`Pruner._resize`)
FIRST_BATCH = 50
#: the smallest batch sized by time
MIN_BATCH = 10
#: the pause after a batch is at least this many times as long as the batch took
IDLE_PER_BUSY = 3.0


def audit_cutoff(now: datetime, days: int) -> datetime:
    """The newest time an access-log entry may have and still be pruned: ``days`` ago, and never later
    than five calendar years ago (whatever the count of leap days)."""
    by_days = now - timedelta(days=days)
    try:
        five_years = now.replace(year=now.year - 5)
    except ValueError:  # 29 February
        five_years = now.replace(year=now.year - 5, day=28)
    return min(by_days, five_years)


def check_audit_days(days: int) -> int:
    """A setting below the legal minimum is refused (at start, with the reason); 0 = keep for ever."""
    if days != 0 and days < AUDIT_MINIMUM_DAYS:
        raise ValueError(
            f"retention_audit_days={days} is shorter than the law allows: access logs (AuditEvents) are "
            f"kept at least five years (HSLF-FS 2016:40, 4 kap. 9 §) = {AUDIT_MINIMUM_DAYS} days; "
            "set it to at least that, or 0 to keep them for ever"
        )
    return days


@dataclass(frozen=True)
class Kind:
    """One kind of row a service prunes.

    ``candidates(cutoff)`` selects the primary keys of the rows that may go (oldest first, without a
    limit: the pruner adds the batch limit and, on PostgreSQL, ``FOR UPDATE SKIP LOCKED``);
    ``apply(conn, keys)`` deletes (or blanks) exactly those rows and returns how many it changed.
    ``days`` 0 keeps the kind for ever. ``cutoff(now, days)`` is ``now - days`` unless said otherwise.
    """

    name: str
    days: int
    candidates: Callable[[Any], sa.Select[Any]]
    apply: Callable[[AsyncConnection, Keys], Awaitable[int]]
    cutoff: Callable[[datetime, int], datetime] = field(default=lambda now, days: now - timedelta(days=days))

    def statement(self, dialect: str, cutoff: datetime, batch: int) -> sa.Select[Any]:
        """One batch's candidate query, as the pruner runs it (the EXPLAIN test checks its plan)."""
        stmt = self.candidates(cutoff).limit(batch)
        if dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return stmt


def delete_by_key(table: sa.Table) -> Callable[[AsyncConnection, Keys], Awaitable[int]]:
    """``apply`` for a table pruned by deleting rows by primary key (one column or several)."""
    pk = list(table.primary_key.columns)

    async def apply(conn: AsyncConnection, keys: Keys) -> int:
        if not keys:
            return 0
        if len(pk) == 1:
            where = pk[0].in_([k[0] for k in keys])
        else:
            where = sa.tuple_(*pk).in_([tuple(k) for k in keys])
        return int((await conn.execute(table.delete().where(where))).rowcount or 0)

    return apply


def inbox_kind(inbox: sa.Table, days: int) -> Kind:
    """Processed message ids older than ``days`` (see :data:`INBOX_MINIMUM_DAYS` for the rule)."""
    return Kind(
        "inbox",
        days,
        lambda cutoff: (
            sa.select(inbox.c.consumer, inbox.c.message_id)
            .where(inbox.c.processed_at < cutoff)
            .order_by(inbox.c.processed_at)
        ),
        delete_by_key(inbox),
    )


def outbox_kind(outbox: sa.Table, days: int) -> Kind:
    """Outbox rows published (confirmed by the broker) more than ``days`` ago; an unpublished row is
    never pruned, however old."""
    return Kind(
        "outbox",
        days,
        lambda cutoff: (
            sa.select(outbox.c.id)
            .where(outbox.c.published_at.is_not(None), outbox.c.published_at < cutoff)
            .order_by(outbox.c.published_at)
        ),
        delete_by_key(outbox),
    )


class Pruner:
    """Runs the kinds' batches: once (:meth:`prune_once`, ``sipctl prune``) or on a schedule (:meth:`run`)."""

    def __init__(
        self,
        service: str,
        engine: AsyncEngine,
        kinds: Sequence[Kind],
        *,
        batch: int = 500,
        pause: float = 0.01,
        batch_seconds: float = 0.01,
        now: Callable[[], datetime] = utcnow,
        counter: Any = None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.kinds = list(kinds)
        #: the most rows one batch takes
        self.batch = batch
        self.pause = pause
        #: how long one batch's transaction should take on SQLite: the batch shrinks or grows (up to
        #: ``batch``) towards it, per kind. There a batch holds the one write lock every live write
        #: waits for (and, with the inline driver, the event loop). On PostgreSQL a batch locks only
        #: the rows it prunes, which the live path never touches, and most of its time is round trips
        #: that hold nothing: ``batch`` rows. 0: always ``batch`` rows.
        self.batch_seconds = batch_seconds if engine.dialect.name == "sqlite" else 0.0
        #: the batch size each kind reached (kept from pass to pass)
        self.sizes: dict[str, int] = {}
        self.now = now
        #: ``sip_retention_pruned_total{kind}`` (a prometheus Counter), or None
        self.counter = counter

    async def prune_once(self, *, dry_run: bool = False) -> dict[str, int]:
        """One pass over every kind; the rows pruned (or, dry run, that would be) per kind."""
        started = time.perf_counter()
        now = self.now()
        counts: dict[str, int] = {}
        for kind in self.kinds:
            if kind.days <= 0:
                continue
            cutoff = kind.cutoff(now, kind.days)
            counts[kind.name] = await (self._count(kind, cutoff) if dry_run else self._prune(kind, cutoff))
        log.info(
            "retention pass" + (" (dry run)" if dry_run else ""),
            extra={
                "service": self.service,
                "pruned": counts,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return counts

    async def _count(self, kind: Kind, cutoff: datetime) -> int:
        async with self.engine.connect() as conn:
            inner = kind.candidates(cutoff).subquery()
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(inner)) or 0)

    async def _prune(self, kind: Kind, cutoff: datetime) -> int:
        total = 0
        dialect = self.engine.dialect.name
        first = min(self.batch, FIRST_BATCH) if self.batch_seconds > 0 else self.batch
        size = self.sizes.get(kind.name, first)
        while True:
            stmt = kind.statement(dialect, cutoff, size)
            async with self.engine.begin() as conn:
                started = time.perf_counter()  # once the connection is ours: not the wait for it
                keys = (await conn.execute(stmt)).all()
                done = await kind.apply(conn, keys) if keys else 0
            elapsed = time.perf_counter() - started
            total += done
            if self.counter is not None and done:
                self.counter.labels(kind=kind.name).inc(done)
            if len(keys) < size:
                return total
            size = self.sizes[kind.name] = self._resize(size, elapsed)
            # the live path takes the database between two batches: at least ``pause``, and at least
            # IDLE_PER_BUSY times as long as the batch took, so a pass holds the database (and a core)
            # for at most a quarter of its time however long its batches take
            await asyncio.sleep(max(self.pause, elapsed * IDLE_PER_BUSY))

    def _resize(self, size: int, elapsed: float) -> int:
        """The next batch's size: towards :attr:`batch_seconds` per transaction (at most halving or
        doubling from one batch to the next), between :data:`MIN_BATCH` and :attr:`batch`. A batch
        holds the database (on SQLite the write lock, and with the inline driver the event loop) for
        its whole transaction; the same number of rows costs more as tables grow and pages leave the
        cache, so a fixed row count held the live path 14-57 ms on a year-old store."""
        if self.batch_seconds <= 0:
            return self.batch
        aim = size * 2 if elapsed <= 0 else int(size * self.batch_seconds / elapsed)
        # at most halving or doubling per batch: one slow commit (SQLite checkpoints the WAL inside
        # whichever commit crosses its threshold) must not cut the batch tenfold; and never below
        # MIN_BATCH, where each batch's fixed cost (its query, the commit) would be most of its time
        aim = max(size // 2, min(size * 2, aim))
        return max(min(MIN_BATCH, self.batch), min(self.batch, aim))

    async def run(
        self, interval: float, *, first_after: float | None = None, dependencies: Any = None
    ) -> None:
        """Prune every ``interval`` seconds until cancelled; the first pass ``first_after`` seconds after
        the start (default: a minute, or the interval if shorter)."""
        await asyncio.sleep(min(interval, 60.0) if first_after is None else first_after)
        while True:
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop outlives database hiccups; the next pass retries
                dependency = dependencies.report(exc) if dependencies is not None else None
                if dependency is None:
                    log.exception("retention pass failed; will retry", extra={"service": self.service})
                else:
                    await dependencies.wait(dependency)
                    continue
            await asyncio.sleep(interval)


def retention_job(
    pruner: Pruner, interval: float, *, dependencies: Any = None
) -> Callable[[], Coroutine[Any, Any, None]]:
    """The pruner as a ``runtime.background`` job."""
    return functools.partial(pruner.run, interval, dependencies=dependencies)


def install(runtime: Any, kinds: Sequence[Kind], *, now: Callable[[], datetime] = utcnow) -> Pruner:
    """The service's pruner with its settings (``SIP_RETENTION_*``), run as a background job of
    ``runtime`` (a :class:`shared.runtime.ServiceRuntime`); ``now``: the service's clock. Returned for
    ``sipctl prune`` and tests."""
    s = runtime.settings
    pruner = Pruner(
        runtime.service,
        runtime.engine,
        kinds,
        batch=s.retention_batch,
        pause=s.retention_pause_seconds,
        batch_seconds=s.retention_batch_seconds,
        now=now,
        counter=runtime.metrics.retention_pruned,
    )
    runtime.background.append(
        retention_job(pruner, s.retention_interval_seconds, dependencies=runtime.dependencies)
    )
    return pruner
