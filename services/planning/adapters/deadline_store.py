"""SQL storage of case deadlines (``case_deadlines``): the durable state of every deadline timer.

The table is added to planning's one :data:`~services.planning.adapters.store.metadata`; importing this
module (``services.planning.app`` and the unit of work do) is what makes ``create_all`` create it.

A deadline is one row per *cycle* of a (case, kind): ``schedule`` opens cycle 1, a reschedule (ready
for discharge again after a revocation, a moved date) closes the pending cycle and opens the next one.
At most one cycle of a (case, kind) is ``pending`` (a partial unique index keeps it so). Statuses:

- ``pending`` — the clock runs; the scheduler escalates it once ``due_at`` has passed;
- ``met`` — done in time (``met_at``);
- ``breached`` — the scheduler found it overdue, marked it and enqueued ``DeadlineBreached`` in the
  same transaction (``breached_at``, ``escalated_to``, ``breach_message_id``); done later, it keeps
  ``breached`` and gets ``met_at`` (met late);
- ``cancelled`` — no longer applies (``cancel_reason``: suspended, the case cancelled/closed,
  superseded by a new cycle).

Every function takes an open connection and runs inside the caller's transaction (a unit of work).
Nothing here stores personal data: case id, reference, kind, times and the owner's HSA-id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning.adapters.store import cases, metadata, related_filter
from services.planning.deadlines import (
    DEADLINE_KINDS,
    Deadline,
    DeadlinePolicy,
    NextDeadline,
    breach_message_id,
    due_at,
)
from services.planning.domain import INVITATION_CLOCK_STATES, OPEN_STATES, SipCase
from services.planning.ports import RelatedTo
from services.planning.rules import admission_notice_due, admission_notice_late
from shared.persistence import UTCDateTime, utcnow

PENDING, MET, BREACHED, CANCELLED = "pending", "met", "breached", "cancelled"
STATUSES = (PENDING, MET, BREACHED, CANCELLED)

_pending = sa.literal_column("status") == PENDING  # for the partial index (both dialects)

case_deadlines = sa.Table(
    "case_deadlines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("case_id", sa.String(36), nullable=False),
    sa.Column("case_reference", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("cycle", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("owner_hsa_id", sa.String(64), nullable=False),
    sa.Column("correlation_id", sa.String(128)),
    sa.Column("met_at", UTCDateTime),
    sa.Column("breached_at", UTCDateTime),
    sa.Column("escalated_to", sa.String(64)),
    sa.Column("breach_message_id", sa.String(36), unique=True),
    sa.Column("cancelled_at", UTCDateTime),
    sa.Column("cancel_reason", sa.String(200)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("case_id", "kind", "cycle", name="uq_case_deadlines_cycle"),
    sa.Index("ix_case_deadlines_due", "status", "due_at"),
    sa.Index("ix_case_deadlines_case", "case_id"),
    sa.Index(
        "uq_case_deadlines_one_pending",
        "case_id",
        "kind",
        unique=True,
        sqlite_where=_pending,
        postgresql_where=_pending,
    ),
)

admission_notices = sa.Table(
    "stay_admission_notices",
    metadata,
    sa.Column("hospital_id", sa.String(200), primary_key=True),
    sa.Column("stay_id", sa.String(200), primary_key=True),
    sa.Column("admitted_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),  # the first admission notice's arrival
)
"""When each stay's admission notice arrived: the admission-notice deadline is judged when the case opens."""


def _deadline(row: Any) -> Deadline:
    return Deadline(
        id=row.id,
        case_id=UUID(row.case_id),
        case_reference=row.case_reference,
        kind=row.kind,
        cycle=row.cycle,
        status=row.status,
        started_at=row.started_at,
        due_at=row.due_at,
        owner_hsa_id=row.owner_hsa_id,
        correlation_id=row.correlation_id,
        met_at=row.met_at,
        breached_at=row.breached_at,
        escalated_to=row.escalated_to,
        breach_message_id=row.breach_message_id,
        cancelled_at=row.cancelled_at,
        cancel_reason=row.cancel_reason,
    )


def _check_kind(kind: str) -> None:
    if kind not in DEADLINE_KINDS:
        raise ValueError(f"unknown deadline kind {kind!r}; known: {', '.join(DEADLINE_KINDS)}")


async def _get(conn: AsyncConnection, deadline_id: int) -> Deadline:
    d = case_deadlines
    return _deadline((await conn.execute(d.select().where(d.c.id == deadline_id))).one())


# The statements of the per-message paths, built once with their values bound at execution.
_d = case_deadlines
_PENDING_ROW = _d.select().where(
    _d.c.case_id == sa.bindparam("k_case_id"), _d.c.kind == sa.bindparam("k_kind"), _d.c.status == PENDING
)
#: every cycle of a (case, kind), the latest first: the pending one (at most one) and the last cycle
_CYCLES = (
    _d.select()
    .where(_d.c.case_id == sa.bindparam("k_case_id"), _d.c.kind == sa.bindparam("k_kind"))
    .order_by(_d.c.cycle.desc())
)
_MET = (
    _d.update()
    .where(_d.c.id == sa.bindparam("k_id"), _d.c.status == PENDING)  # the scheduler may have claimed it
    .values(status=MET, met_at=sa.bindparam("met_at"), updated_at=sa.bindparam("updated_at"))
)
_ADMISSION_NOTICE = admission_notices.select().where(
    admission_notices.c.hospital_id == sa.bindparam("k_hospital_id"),
    admission_notices.c.stay_id == sa.bindparam("k_stay_id"),
)


def _as_read(value: datetime) -> datetime:
    """A datetime as reading it back gives it (:class:`shared.persistence.UTCDateTime`: aware UTC)."""
    return value.astimezone(UTC)


async def _pending_row(conn: AsyncConnection, case_id: UUID, kind: str) -> Deadline | None:
    row = (await conn.execute(_PENDING_ROW, {"k_case_id": str(case_id), "k_kind": kind})).first()
    return _deadline(row) if row else None


async def _latest(conn: AsyncConnection, case_id: UUID, kind: str, *statuses: str) -> Deadline | None:
    d = case_deadlines
    q = d.select().where(d.c.case_id == str(case_id), d.c.kind == kind)
    if statuses:
        q = q.where(d.c.status.in_(statuses))
    row = (await conn.execute(q.order_by(d.c.cycle.desc()).limit(1))).first()
    return _deadline(row) if row else None


# ---- the timer operations ------------------------------------------------------------------------
async def schedule(
    conn: AsyncConnection,
    case_id: UUID,
    kind: str,
    due_at: datetime,
    owner: str,
    *,
    started_at: datetime,
    case_reference: str | None = None,
    correlation_id: str | None = None,
    at: datetime | None = None,
) -> Deadline:
    """Start (or restart) the ``kind`` clock of a case: one pending row with ``due_at`` afterwards.

    Idempotent: the same pending deadline again changes nothing. A pending one with another due time
    or owner is closed (``cancelled``, reason ``superseded``) and a new cycle opened. Without
    ``case_reference`` the reference and correlation id come from an earlier deadline of the case,
    else from ``sip_cases``.
    """
    _check_kind(kind)
    at = at or utcnow()
    # one read for the pending cycle and the number of the last one (the case's row is locked by the
    # change that schedules, or the case is new: no other transaction adds a cycle meanwhile)
    cycles = (await conn.execute(_CYCLES, {"k_case_id": str(case_id), "k_kind": kind})).all()
    last = cycles[0].cycle if cycles else 0
    pending = next((r for r in cycles if r.status == PENDING), None)
    current = _deadline(pending) if pending is not None else None
    if current is not None:
        if current.due_at == due_at and current.owner_hsa_id == owner:
            return current
        await _cancel_ids(conn, [current.id], at=at, reason="superseded")
    d = case_deadlines
    if case_reference is None:  # from an earlier deadline of the case, else from the case itself
        row = (
            await conn.execute(
                sa.select(d.c.case_reference.label("reference"), d.c.correlation_id)
                .where(d.c.case_id == str(case_id))
                .order_by(d.c.id.desc())
                .limit(1)
            )
        ).first() or (
            await conn.execute(
                sa.select(cases.c.reference, cases.c.correlation_id).where(cases.c.id == str(case_id))
            )
        ).first()
        if row is None:
            raise LookupError(f"no SIP case {case_id}: pass case_reference")
        case_reference, correlation_id = row.reference, correlation_id or row.correlation_id
    cycle = int(last or 0) + 1
    result = await conn.execute(
        _INSERT_DEADLINE,  # built once, values bound at execution
        {
            "case_id": str(case_id),
            "case_reference": case_reference,
            "kind": kind,
            "cycle": cycle,
            "status": PENDING,
            "started_at": started_at,
            "due_at": due_at,
            "owner_hsa_id": owner,
            "correlation_id": correlation_id,
            "updated_at": at,
        },
    )
    # the row just inserted, as reading it back would give it (the other columns have no default)
    inserted = result.inserted_primary_key
    assert inserted is not None  # a single-row insert
    return Deadline(
        id=int(inserted[0]), case_id=UUID(str(case_id)), case_reference=case_reference,
        kind=kind, cycle=cycle, status=PENDING, started_at=_as_read(started_at), due_at=_as_read(due_at),
        owner_hsa_id=owner, correlation_id=correlation_id, met_at=None, breached_at=None,
        escalated_to=None, breach_message_id=None, cancelled_at=None, cancel_reason=None,
    )  # fmt: skip


_INSERT_DEADLINE = case_deadlines.insert()


async def reschedule(
    conn: AsyncConnection,
    case_id: UUID,
    kind: str,
    due_at: datetime,
    *,
    started_at: datetime,
    owner: str | None = None,
    at: datetime | None = None,
) -> Deadline | None:
    """A new cycle of the case's ``kind`` deadline (after a suspension, or when the start moved).

    Reference, owner (unless given) and correlation id come from the latest cycle; None when the case
    never had a ``kind`` deadline.
    """
    _check_kind(kind)
    last = await _latest(conn, case_id, kind)
    if last is None:
        return None
    return await schedule(
        conn, case_id, kind, due_at, owner or last.owner_hsa_id, started_at=started_at,
        case_reference=last.case_reference, correlation_id=last.correlation_id, at=at,
    )  # fmt: skip


async def meet(conn: AsyncConnection, case_id: UUID, kind: str, at: datetime) -> Deadline | None:
    """The case did what the deadline asked, at ``at``.

    A pending deadline becomes ``met`` (even when ``at`` is past ``due_at`` but the scheduler had not
    yet escalated it: it is then "met late", :attr:`Deadline.met_late`, and not escalated). An already
    escalated one stays ``breached`` and records ``met_at``. None when there is nothing to meet.
    """
    _check_kind(kind)
    d = case_deadlines
    current = await _pending_row(conn, case_id, kind)
    if current is not None:
        done = await conn.execute(_MET, {"k_id": current.id, "met_at": at, "updated_at": at})
        if done.rowcount == 1:  # still pending when updated: the row is the one read, now met
            return dataclasses.replace(current, status=MET, met_at=_as_read(at))
    late = await _latest(conn, case_id, kind, BREACHED)
    if late is None or late.met_at is not None:
        return None
    await conn.execute(d.update().where(d.c.id == late.id).values(met_at=at, updated_at=at))
    return await _get(conn, late.id)


async def _cancel_ids(conn: AsyncConnection, ids: list[int], *, at: datetime, reason: str) -> int:
    d = case_deadlines
    if not ids:
        return 0
    done = await conn.execute(
        d.update()
        .where(d.c.id.in_(ids), d.c.status == PENDING)
        .values(status=CANCELLED, cancelled_at=at, cancel_reason=reason[:200], updated_at=at)
    )
    return int(done.rowcount)


async def cancel(
    conn: AsyncConnection, case_id: UUID, kind: str | None = None, *, at: datetime, reason: str
) -> int:
    """Stop the case's pending ``kind`` deadline (every pending one when ``kind`` is None)."""
    d = case_deadlines
    q = sa.select(d.c.id).where(d.c.case_id == str(case_id), d.c.status == PENDING)
    if kind is not None:
        _check_kind(kind)
        q = q.where(d.c.kind == kind)
    ids = list((await conn.execute(q)).scalars())
    return await _cancel_ids(conn, ids, at=at, reason=reason)


async def pending_for(conn: AsyncConnection, case_id: UUID) -> list[Deadline]:
    d = case_deadlines
    q = d.select().where(d.c.case_id == str(case_id), d.c.status == PENDING).order_by(d.c.due_at, d.c.id)
    return [_deadline(r) for r in await conn.execute(q)]


async def history_for(conn: AsyncConnection, case_id: UUID) -> list[Deadline]:
    """Every cycle of every deadline of the case, oldest first (for the case view and the CarePlan)."""
    d = case_deadlines
    q = d.select().where(d.c.case_id == str(case_id)).order_by(d.c.started_at, d.c.id)
    return [_deadline(r) for r in await conn.execute(q)]


async def next_deadlines(
    conn: AsyncConnection,
    *,
    limit: int = 500,
    where: Any = None,
    keep: Collection[UUID] | None = None,
) -> list[NextDeadline]:
    """Open cases with their next pending deadline and owner, the soonest first (none: last).

    ``where``: a SQL pre-filter of the cases (:func:`~services.planning.adapters.store.related_to`),
    applied to the cases and to the deadlines read with them; ``keep``: of those, only these (the
    caller's own check of each case). Both before the ``limit``: an organisation gets its own first
    ``limit`` cases, not its share of the region's first ``limit``."""
    d = case_deadlines
    chosen: Any = cases.c.state.in_(sorted(OPEN_STATES))
    if where is not None:
        chosen = sa.and_(chosen, where)
    open_cases = (
        await conn.execute(
            sa.select(cases.c.id, cases.c.reference, cases.c.state, cases.c.owner_hsa_id).where(chosen)
        )
    ).all()
    if keep is not None:
        kept = {str(k) for k in keep}
        open_cases = [c for c in open_cases if c.id in kept]
    if not open_cases:
        return []
    # the deadlines of the open cases chosen (a pending or unmet deadline of a closed case is not shown)
    of_chosen = d.c.case_id.in_(sa.select(cases.c.id).where(chosen))
    first: dict[str, Any] = {}
    pending = await conn.execute(
        sa.select(d.c.case_id, d.c.kind, d.c.due_at, d.c.owner_hsa_id)
        # unfiltered (the operator), the pending deadlines are read whole through ix_case_deadlines_due:
        # those of cases no longer open are few and not shown (the loop below goes by the open cases)
        .where(d.c.status == PENDING, *([of_chosen] if where is not None else []))
        .order_by(d.c.due_at, d.c.id)
    )
    for row in pending:
        first.setdefault(row.case_id, row)
    unmet: dict[str, int] = dict(
        (
            await conn.execute(
                sa.select(d.c.case_id, sa.func.count())
                .where(d.c.status == BREACHED, d.c.met_at.is_(None), of_chosen)
                .group_by(d.c.case_id)
            )
        ).all()
    )
    out = []
    for c in open_cases:
        nxt = first.get(c.id)
        out.append(
            NextDeadline(
                case_id=UUID(c.id),
                case_reference=c.reference,
                case_state=c.state,
                owner_hsa_id=nxt.owner_hsa_id if nxt else c.owner_hsa_id,
                kind=nxt.kind if nxt else None,
                due_at=nxt.due_at if nxt else None,
                breached_unmet=int(unmet.get(c.id, 0)),
            )
        )
    out.sort(key=lambda n: (n.due_at is None, n.due_at or datetime.max, n.case_reference))
    return out[:limit]


async def claim_due(conn: AsyncConnection, now: datetime, *, limit: int = 100) -> list[Deadline]:
    """Mark pending deadlines with ``due_at <= now`` as breached; return those this call claimed.

    Safe with several planning replicas: rows are picked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (the
    write lock serialises on SQLite) and each is claimed by ``UPDATE … WHERE status = 'pending'`` whose
    row count must be 1 — a deadline met or claimed concurrently is skipped. The caller enqueues the
    ``DeadlineBreached`` messages in the same transaction.
    """
    d = case_deadlines
    pick = (
        d.select().where(d.c.status == PENDING, d.c.due_at <= now).order_by(d.c.due_at, d.c.id).limit(limit)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    claimed: list[Deadline] = []
    for row in (await conn.execute(pick)).all():
        message_id = str(breach_message_id(row.case_id, row.kind, row.cycle))
        done = await conn.execute(
            d.update()
            .where(d.c.id == row.id, d.c.status == PENDING)
            .values(
                status=BREACHED,
                breached_at=now,
                escalated_to=row.owner_hsa_id,
                breach_message_id=message_id,
                updated_at=now,
            )
        )
        if done.rowcount == 1:
            claimed.append(await _get(conn, row.id))
    return claimed


# ---- the case lifecycle, for the handlers ----------------------------------------------------------
async def on_case_opened(conn: AsyncConnection, case: SipCase, *, at: datetime) -> list[Deadline]:
    """A case was opened: start its invitation clock (due ``case.invitation_due_at``, from the exact
    ready-for-discharge time) and judge the stay's admission notice when one was received. A case
    without a ready-for-discharge time (not opened by a discharge) gets no invitation clock.
    """
    out: list[Deadline] = []
    if case.invitation_due_at is not None and case.ready_for_discharge_at is not None:
        invitation = await schedule(
            conn, case.id, "invitation", case.invitation_due_at, case.owner_hsa_id,
            started_at=case.ready_for_discharge_at, case_reference=case.reference,
            correlation_id=case.correlation_id, at=at,
        )  # fmt: skip
        out.append(invitation)
    notice = (
        await conn.execute(
            _ADMISSION_NOTICE, {"k_hospital_id": case.hospital_hsa_id, "k_stay_id": case.episode_id}
        )
    ).first()
    if notice is not None:
        judged = await _judge_admission_notice(conn, case, notice.admitted_at, notice.received_at, at=at)
        if judged is not None:
            out.append(judged)
    return out


async def note_admission_notice(
    conn: AsyncConnection,
    *,
    hospital_id: str,
    stay_id: str,
    admitted_at: datetime,
    received_at: datetime,
    case: SipCase | None = None,
) -> Deadline | None:
    """An admission notice arrived (``received_at``) for an admission at ``admitted_at``.

    Remembered for the stay (the first arrival counts; a correction updates the admission time); the
    24 h rule (:func:`services.planning.rules.admission_notice_late`) is judged for the stay's case now
    when ``case`` is given (an open case), else when the case opens (:func:`on_case_opened`). A late
    notice becomes a pending deadline already past due, so the scheduler's next pass escalates it
    (with ``met_at`` = the arrival).
    """
    n = admission_notices
    key = (n.c.hospital_id == hospital_id, n.c.stay_id == stay_id)
    exists = await conn.scalar(sa.select(sa.func.count()).select_from(n).where(*key))
    if exists:
        await conn.execute(n.update().where(*key).values(admitted_at=admitted_at))
    else:
        await conn.execute(
            n.insert().values(
                hospital_id=hospital_id, stay_id=stay_id, admitted_at=admitted_at, received_at=received_at
            )
        )
    if case is None or case.state not in OPEN_STATES:
        return None
    first = (await conn.execute(sa.select(n.c.received_at).where(*key))).scalar_one()
    return await _judge_admission_notice(conn, case, admitted_at, first, at=received_at)


async def _judge_admission_notice(
    conn: AsyncConnection, case: SipCase, admitted_at: datetime, received_at: datetime, *, at: datetime
) -> Deadline | None:
    if await _latest(conn, case.id, "admission-notice") is not None:
        return None  # judged once per case
    due = admission_notice_due(admitted_at)
    deadline = await schedule(
        conn, case.id, "admission-notice", due, case.owner_hsa_id, started_at=admitted_at,
        case_reference=case.reference, correlation_id=case.correlation_id, at=at,
    )  # fmt: skip
    d = case_deadlines
    if not admission_notice_late(admitted_at, received_at):
        await conn.execute(d.update().where(d.c.id == deadline.id).values(status=MET, met_at=received_at))
    else:  # late: left pending past due, the scheduler escalates it
        await conn.execute(d.update().where(d.c.id == deadline.id).values(met_at=received_at))
    return await _get(conn, deadline.id)


async def on_invitation_sent(conn: AsyncConnection, case_id: UUID, *, at: datetime) -> Deadline | None:
    """The invitation went out: the invitation deadline is met (late if after ``due_at``)."""
    return await meet(conn, case_id, "invitation", at)


async def on_case_suspended(conn: AsyncConnection, case_id: UUID, *, at: datetime) -> int:
    """Ready-for-discharge revoked: every running clock of the case stops."""
    return await cancel(conn, case_id, at=at, reason="suspended")


async def on_case_resumed(conn: AsyncConnection, case: SipCase, *, at: datetime) -> Deadline | None:
    """Ready again (or readiness moved earlier): the invitation clock runs again from the case's
    ``ready_for_discharge_at`` to its ``invitation_due_at`` — when the case still waits to invite."""
    if case.state not in INVITATION_CLOCK_STATES:
        return None
    if case.invitation_due_at is None or case.ready_for_discharge_at is None:
        return None
    return await schedule(
        conn, case.id, "invitation", case.invitation_due_at, case.owner_hsa_id,
        started_at=case.ready_for_discharge_at, case_reference=case.reference,
        correlation_id=case.correlation_id, at=at,
    )  # fmt: skip


async def on_case_ended(conn: AsyncConnection, case_id: UUID, *, at: datetime, reason: str) -> int:
    """The case was declined, cancelled or closed: nothing of it is escalated any more."""
    return await cancel(conn, case_id, at=at, reason=reason)


async def schedule_for_case(
    conn: AsyncConnection,
    case: SipCase,
    kind: str,
    start: datetime,
    policy: DeadlinePolicy | Any,
    *,
    at: datetime,
) -> Deadline:
    """Start the case's ``kind`` clock at ``start``, due by the policy (:func:`deadlines.due_at`), owned by
    the case's owner. ``policy`` may be the planning settings. For ``meeting`` (start: the invitation
    sent), ``follow-up`` (start: the planned follow-up), ``consent-expiry`` (start: ``valid_until``).
    """
    return await schedule(
        conn, case.id, kind, due_at(kind, start, policy), case.owner_hsa_id, started_at=start,
        case_reference=case.reference, correlation_id=case.correlation_id, at=at,
    )  # fmt: skip


class SqlDeadlines:
    """The deadline operations bound to one connection: for the handlers in a unit of work
    (``deadlines=SqlDeadlines(uow.conn)`` next to ``repo=SqlCaseRepository(uow.conn)``), the HTTP API's
    reads (:class:`~services.planning.ports.DeadlineStore`) and the scheduler's claim
    (:class:`~services.planning.ports.DueDeadlines`) — ``app.py`` hands the class to both."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def case_opened(self, case: SipCase, *, at: datetime) -> list[Deadline]:
        return await on_case_opened(self.conn, case, at=at)

    async def admission_noticed(
        self,
        *,
        hospital_id: str,
        stay_id: str,
        admitted_at: datetime,
        received_at: datetime,
        case: SipCase | None = None,
    ) -> Deadline | None:
        return await note_admission_notice(
            self.conn, hospital_id=hospital_id, stay_id=stay_id, admitted_at=admitted_at,
            received_at=received_at, case=case,
        )  # fmt: skip

    async def invitation_sent(self, case_id: UUID, *, at: datetime) -> Deadline | None:
        return await on_invitation_sent(self.conn, case_id, at=at)

    async def case_suspended(self, case_id: UUID, *, at: datetime) -> int:
        return await on_case_suspended(self.conn, case_id, at=at)

    async def case_resumed(self, case: SipCase, *, at: datetime) -> Deadline | None:
        return await on_case_resumed(self.conn, case, at=at)

    async def case_ended(self, case_id: UUID, *, at: datetime, reason: str) -> int:
        return await on_case_ended(self.conn, case_id, at=at, reason=reason)

    async def start(
        self, case: SipCase, kind: str, start: datetime, policy: DeadlinePolicy | Any, *, at: datetime
    ) -> Deadline:
        return await schedule_for_case(self.conn, case, kind, start, policy, at=at)

    async def met(self, case_id: UUID, kind: str, *, at: datetime) -> Deadline | None:
        return await meet(self.conn, case_id, kind, at)

    async def stop(self, case_id: UUID, kind: str | None = None, *, at: datetime, reason: str) -> int:
        return await cancel(self.conn, case_id, kind, at=at, reason=reason)

    async def pending(self, case_id: UUID) -> list[Deadline]:
        return await pending_for(self.conn, case_id)

    async def history(self, case_id: UUID) -> list[Deadline]:
        return await history_for(self.conn, case_id)

    async def next_deadlines(
        self, *, limit: int = 500, related: RelatedTo | None = None, keep: Collection[UUID] | None = None
    ) -> list[NextDeadline]:
        return await next_deadlines(self.conn, limit=limit, where=related_filter(related), keep=keep)

    async def claim_due(self, now: datetime, *, limit: int = 100) -> list[Deadline]:
        return await claim_due(self.conn, now, limit=limit)
