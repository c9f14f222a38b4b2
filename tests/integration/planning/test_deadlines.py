"""Durable deadlines on a real database (a SQLite file, and PostgreSQL): escalated once, after restarts too.

The clock is a :class:`FixedClock` the tests move; the scheduler's state is only in the database.
"""

import asyncio
import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from services.planning import scheduler
from services.planning.adapters import deadline_store as ds
from services.planning.adapters.store import cases, metadata, related_to
from shared.clock import FixedClock
from shared.persistence import make_engine, outbox_table, sqlite_url

T0 = datetime(2026, 4, 2, 13, 0, tzinfo=UTC)  # Thu before Easter, 15:00 in Stockholm
OWNER = "SE2321000016-VC01"
OUTBOX = outbox_table(metadata)
# the scheduler wired as app.py wires it: the SQL deadline store on the pass's connection
escalate_due = functools.partial(scheduler.escalate_due, deadlines=ds.SqlDeadlines)
scheduler_job = functools.partial(scheduler.scheduler_job, deadlines=ds.SqlDeadlines)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return sqlite_url(tmp_path / "planning.db")


async def engine_for(url: str):
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


@pytest.fixture
async def engine(db_url):
    e = await engine_for(db_url)
    yield e
    await e.dispose()


async def breaches(engine) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(OUTBOX).order_by(OUTBOX.c.id))).all()
    assert all(r.routing_key == "planning.deadline-breached.v1" for r in rows)
    assert all(r.exchange == "planning.events" for r in rows)
    return [json.loads(r.body) for r in rows]


async def schedule(engine, case_id=None, due=T0 + timedelta(days=3), kind="invitation", **kw):
    case_id = case_id or uuid4()
    async with engine.begin() as conn:
        await ds.schedule(
            conn, case_id, kind, due, kw.pop("owner", OWNER), started_at=kw.pop("started_at", T0),
            case_reference=kw.pop("reference", f"SIP-2026-{case_id.hex[:6].upper()}"), at=T0, **kw,
        )  # fmt: skip
    return case_id


async def test_a_deadline_is_escalated_exactly_once_after_it_falls_due(engine):
    clock = FixedClock(T0)
    case_id = await schedule(engine, correlation_id="corr-1")
    assert await escalate_due(engine, OUTBOX, clock) == []
    clock.advance(timedelta(days=3) - timedelta(seconds=1))
    assert await escalate_due(engine, OUTBOX, clock) == []
    clock.advance(timedelta(seconds=1))  # due_at <= now: breached
    woken = []
    [msg] = await escalate_due(engine, OUTBOX, clock, wake=lambda: woken.append(1))
    assert woken == [1]
    assert (msg.case_id, msg.kind, msg.owner_hsa_id) == (case_id, "invitation", OWNER)
    clock.advance(timedelta(hours=5))
    assert await escalate_due(engine, OUTBOX, clock) == []  # never twice
    [body] = await breaches(engine)
    assert body["case_id"] == str(case_id)
    assert body["case_reference"] == f"SIP-2026-{case_id.hex[:6].upper()}"
    assert body["kind"] == "invitation"
    assert body["owner_hsa_id"] == OWNER
    assert body["correlation_id"] == "corr-1"
    assert datetime.fromisoformat(body["due_at"]) == T0 + timedelta(days=3)
    assert datetime.fromisoformat(body["breached_at"]) == T0 + timedelta(days=3)
    assert body["message_id"] == str(ds.breach_message_id(case_id, "invitation", 1))
    async with engine.connect() as conn:
        [d] = await ds.history_for(conn, case_id)
        assert await ds.pending_for(conn, case_id) == []
    assert (d.status, d.escalated_to, d.breached_at) == ("breached", OWNER, T0 + timedelta(days=3))
    assert d.breach_message_id == body["message_id"]


async def test_a_deadline_met_in_time_is_never_escalated_and_a_late_one_keeps_its_breach(engine):
    clock = FixedClock(T0)
    on_time, late = await schedule(engine), await schedule(engine)
    async with engine.begin() as conn:
        met = await ds.meet(conn, on_time, "invitation", T0 + timedelta(days=1))
    assert (met.status, met.met_at, met.met_late) == ("met", T0 + timedelta(days=1), False)
    clock.advance(timedelta(days=30))
    [msg] = await escalate_due(engine, OUTBOX, clock)
    assert msg.case_id == late
    async with engine.begin() as conn:
        done_late = await ds.meet(conn, late, "invitation", clock.now())
        assert await ds.meet(conn, late, "invitation", clock.now()) is None  # nothing left to meet
        assert await ds.meet(conn, uuid4(), "invitation", clock.now()) is None
    assert (done_late.status, done_late.met_at, done_late.met_late) == ("breached", clock.now(), True)
    assert await escalate_due(engine, OUTBOX, clock) == []
    assert [b["case_id"] for b in await breaches(engine)] == [str(late)]


async def test_a_breach_due_while_planning_was_down_is_escalated_once_after_the_restart(db_url):
    clock = FixedClock(T0)
    first = await engine_for(db_url)
    case_id = await schedule(first)
    assert await escalate_due(first, OUTBOX, clock) == []
    await first.dispose()  # the process stops; nothing of the timer lives in memory

    clock.advance(timedelta(days=4))  # the deadline passes while nothing runs
    second = await engine_for(db_url)  # a new process on the same database
    try:
        [msg] = await escalate_due(second, OUTBOX, clock)
        assert msg.case_id == case_id
    finally:
        await second.dispose()

    third = await engine_for(db_url)  # and once more: already escalated, nothing new
    try:
        clock.advance(timedelta(days=1))
        assert await escalate_due(third, OUTBOX, clock) == []
        assert [b["case_id"] for b in await breaches(third)] == [str(case_id)]
    finally:
        await third.dispose()


async def test_two_schedulers_racing_on_one_database_escalate_each_deadline_once(db_url):
    clock = FixedClock(T0)
    a, b = await engine_for(db_url), await engine_for(db_url)  # two planning replicas
    try:
        ids = [await schedule(a, due=T0 + timedelta(minutes=i)) for i in range(25)]
        clock.advance(timedelta(hours=1))
        results = await asyncio.gather(
            *(escalate_due(e, OUTBOX, clock, batch=3) for e in (a, b, a, b)), return_exceptions=True
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        sent = [m.case_id for r in results for m in r]
        assert sorted(sent) == sorted(ids)  # every deadline once, none twice
        assert sorted(UUID(x["case_id"]) for x in await breaches(a)) == sorted(ids)
    finally:
        await a.dispose()
        await b.dispose()


async def test_suspend_resume_supersede_and_end_of_a_case(engine):
    clock = FixedClock(T0)
    case_id = await schedule(engine)
    async with engine.begin() as conn:
        same = await ds.schedule(conn, case_id, "invitation", T0 + timedelta(days=3), OWNER, started_at=T0)
        assert same.cycle == 1  # the same deadline again changes nothing
        assert (
            await ds.cancel(conn, case_id, "invitation", at=T0 + timedelta(hours=1), reason="suspended") == 1
        )
        assert await ds.pending_for(conn, case_id) == []
    clock.advance(timedelta(days=5))
    assert await escalate_due(engine, OUTBOX, clock) == []  # a suspended clock stands still

    ready_again = clock.now()
    async with engine.begin() as conn:
        resumed = await ds.reschedule(
            conn, case_id, "invitation", ready_again + timedelta(days=3), started_at=ready_again
        )
        assert (resumed.cycle, resumed.status, resumed.owner_hsa_id) == (2, "pending", OWNER)
        moved = await ds.schedule(  # readiness moved earlier: the pending cycle is superseded
            conn, case_id, "invitation", ready_again + timedelta(days=2), OWNER, started_at=ready_again
        )
        assert moved.cycle == 3
        assert await ds.reschedule(conn, uuid4(), "invitation", ready_again, started_at=ready_again) is None
        history = await ds.history_for(conn, case_id)
    assert [(d.cycle, d.status, d.cancel_reason) for d in history] == [
        (1, "cancelled", "suspended"), (2, "cancelled", "superseded"), (3, "pending", None),
    ]  # fmt: skip
    clock.advance(timedelta(days=2))
    [msg] = await escalate_due(engine, OUTBOX, clock)
    assert msg.message_id == ds.breach_message_id(case_id, "invitation", 3)

    async with engine.begin() as conn:  # a new cycle after the breach can breach again, once
        await ds.reschedule(conn, case_id, "invitation", clock.now(), started_at=clock.now())
        await ds.schedule(conn, case_id, "meeting", clock.now() + timedelta(days=14), OWNER,
                          started_at=clock.now())  # fmt: skip
        assert await ds.cancel(conn, case_id, at=clock.now(), reason="the case was closed") == 2
    clock.advance(timedelta(days=30))
    assert await escalate_due(engine, OUTBOX, clock) == []


async def test_unknown_kind_and_unknown_case_are_refused(engine):
    async with engine.begin() as conn:
        with pytest.raises(ValueError, match="unknown deadline kind"):
            await ds.schedule(conn, uuid4(), "lunch", T0, OWNER, started_at=T0, case_reference="SIP-X")
        with pytest.raises(LookupError, match="no SIP case"):
            await ds.schedule(conn, uuid4(), "invitation", T0, OWNER, started_at=T0)  # no reference, no case


# ---- the case lifecycle helpers and the coordinators' overview (need rows in sip_cases) -----------
@dataclass
class Case:  # the attributes of services.planning.domain.SipCase the helpers read
    id: UUID
    reference: str
    hospital_hsa_id: str
    episode_id: str
    owner_hsa_id: str
    state: str
    ready_for_discharge_at: datetime | None
    invitation_due_at: datetime | None
    correlation_id: str | None = None


def _filler(column: sa.Column):
    t = column.type
    if isinstance(t, sa.Boolean):
        return False
    if isinstance(t, sa.Integer):
        return 0
    if isinstance(t, sa.DateTime) or getattr(t, "impl", None) is not None:
        return T0
    if isinstance(t, sa.Text):
        return "{}" if column.name == "details" else "[]"
    return "x"


async def add_case(conn, case: Case) -> None:
    """A ``sip_cases`` row with what the deadline code reads (other required columns filled neutrally)."""
    values = {
        "id": str(case.id), "reference": case.reference, "hospital_hsa_id": case.hospital_hsa_id,
        "episode_id": case.episode_id, "owner_hsa_id": case.owner_hsa_id, "state": case.state,
        "ready_for_discharge_at": case.ready_for_discharge_at, "invitation_due_at": case.invitation_due_at,
        "correlation_id": case.correlation_id, "patient_identifier": "191212121212", "kommun_code": "0180",
    }  # fmt: skip
    for col in cases.columns:
        if col.name not in values and not col.nullable and col.default is None and col.server_default is None:
            values[col.name] = _filler(col)
    await conn.execute(cases.insert().values(**values))


def new_case(state="consent_pending", ready=T0, owner=OWNER, **kw) -> Case:
    cid = uuid4()
    return Case(
        id=cid, reference=f"SIP-2026-{cid.hex[:6].upper()}", hospital_hsa_id="SE2321000016-SJH01",
        episode_id=f"V-{cid.hex[:6]}", owner_hsa_id=owner, state=state, ready_for_discharge_at=ready,
        invitation_due_at=ready + timedelta(days=3) if ready else None, **kw,
    )  # fmt: skip


async def test_case_lifecycle_helpers_and_the_reference_lookup(engine):
    clock = FixedClock(T0)
    case = new_case(correlation_id="corr-7")
    async with engine.begin() as conn:
        await add_case(conn, case)
        [inv] = await ds.on_case_opened(conn, case, at=T0)
        assert (inv.kind, inv.due_at, inv.started_at) == ("invitation", T0 + timedelta(days=3), T0)
        # the low-level call finds reference and correlation id in sip_cases
        meeting = await ds.schedule(conn, case.id, "meeting", T0 + timedelta(days=20), OWNER, started_at=T0)
        assert (meeting.case_reference, meeting.correlation_id) == (case.reference, "corr-7")
        assert await ds.on_case_suspended(conn, case.id, at=T0 + timedelta(hours=2)) == 2
        case.ready_for_discharge_at = T0 + timedelta(days=1)
        case.invitation_due_at = T0 + timedelta(days=4)
        resumed = await ds.on_case_resumed(conn, case, at=T0 + timedelta(days=1))
        assert (resumed.cycle, resumed.due_at) == (2, T0 + timedelta(days=4))
        met = await ds.on_invitation_sent(conn, case.id, at=T0 + timedelta(days=2))
        assert met.status == "met"
        invited = Case(**{**case.__dict__, "state": "invited"})
        assert await ds.on_case_resumed(conn, invited, at=T0) is None  # no invitation clock once invited
        no_discharge = new_case(ready=None)
        await add_case(conn, no_discharge)
        assert await ds.on_case_opened(conn, no_discharge, at=T0) == []
        assert await ds.on_case_ended(conn, case.id, at=T0, reason="deceased") == 0
    clock.advance(timedelta(days=60))
    assert await escalate_due(engine, OUTBOX, clock) == []


async def test_the_admission_notice_is_judged_against_24_clock_hours(engine):
    clock = FixedClock(T0 + timedelta(days=2))
    on_time, late, early_case = new_case(), new_case(), new_case()
    async with engine.begin() as conn:
        for c in (on_time, late, early_case):
            await add_case(conn, c)
        admitted = T0 - timedelta(days=5)
        for c, hours in ((on_time, 24), (late, 30)):
            await ds.note_admission_notice(
                conn, hospital_id=c.hospital_hsa_id, stay_id=c.episode_id, admitted_at=admitted,
                received_at=admitted + timedelta(hours=hours),
            )  # fmt: skip
        opened_on_time = await ds.on_case_opened(conn, on_time, at=T0)
        opened_late = await ds.on_case_opened(conn, late, at=T0)
        # a notice for a stay whose case is already open is judged at once
        judged = await ds.note_admission_notice(
            conn, hospital_id=early_case.hospital_hsa_id, stay_id=early_case.episode_id, admitted_at=admitted,
            received_at=admitted + timedelta(hours=2), case=early_case,
        )  # fmt: skip
    assert [(d.kind, d.status) for d in opened_on_time] == [
        ("invitation", "pending"),
        ("admission-notice", "met"),
    ]
    assert [(d.kind, d.status) for d in opened_late] == [
        ("invitation", "pending"),
        ("admission-notice", "pending"),
    ]
    assert (judged.status, judged.met_at) == ("met", admitted + timedelta(hours=2))
    [msg] = await escalate_due(engine, OUTBOX, clock)  # the late notice: escalated on the next pass
    assert (msg.case_id, msg.kind, msg.due_at) == (
        late.id,
        "admission-notice",
        admitted + timedelta(hours=24),
    )
    async with engine.begin() as conn:  # judged once per case
        again = await ds.note_admission_notice(
            conn, hospital_id=late.hospital_hsa_id, stay_id=late.episode_id, admitted_at=admitted,
            received_at=T0, case=late,
        )  # fmt: skip
        assert again is None


async def test_next_deadlines_lists_open_cases_with_their_next_deadline_and_owner(engine):
    clock = FixedClock(T0)
    soon, later, idle, closed = (
        new_case(),
        new_case(owner="SE2321000016-VC02"),
        new_case(),
        new_case("closed"),
    )
    async with engine.begin() as conn:
        for c in (soon, later, idle, closed):
            await add_case(conn, c)
        await ds.schedule(conn, soon.id, "invitation", T0 + timedelta(hours=1), OWNER, started_at=T0)
        await ds.schedule(conn, soon.id, "meeting", T0 + timedelta(days=9), OWNER, started_at=T0)
        await ds.schedule(
            conn, later.id, "invitation", T0 + timedelta(days=2), later.owner_hsa_id, started_at=T0
        )
        await ds.schedule(conn, closed.id, "invitation", T0, OWNER, started_at=T0)
    clock.advance(timedelta(hours=2))
    await escalate_due(engine, OUTBOX, clock)  # soon's invitation and closed's deadline breach
    async with engine.connect() as conn:
        overview = await ds.next_deadlines(conn)
    got = [(n.case_id, n.kind, n.due_at, n.owner_hsa_id, n.breached_unmet) for n in overview]
    assert got == [
        (later.id, "invitation", T0 + timedelta(days=2), "SE2321000016-VC02", 0),
        (soon.id, "meeting", T0 + timedelta(days=9), OWNER, 1),
        (idle.id, None, None, OWNER, 0),
    ]


async def test_an_organisations_overview_is_its_own_cases_chosen_before_the_limit(engine):
    """The region's first ``limit`` cases by deadline are not an organisation's: filtered after the
    limit, an organisation whose deadlines come later than the region's first saw nothing."""
    other = "SE2321000016-VC02"
    soon = [new_case() for _ in range(4)]  # OWNER's, each due before other's
    later, breached_closed = new_case(owner=other), new_case("closed", owner=other)
    clock = FixedClock(T0)
    due = {breached_closed.id: 1, **{c.id: 8 + i for i, c in enumerate(soon)}, later.id: 20}  # hours
    async with engine.begin() as conn:
        for c in (breached_closed, *soon, later):
            await add_case(conn, c)
            await ds.schedule(
                conn, c.id, "invitation", T0 + timedelta(hours=due[c.id]), c.owner_hsa_id, started_at=T0
            )
    clock.advance(timedelta(hours=2))  # breached_closed's deadline passes unmet
    await escalate_due(engine, OUTBOX, clock)
    async with engine.connect() as conn:
        region = [n.case_id for n in await ds.next_deadlines(conn, limit=3)]
        assert later.id not in region and len(region) == 3  # the region's first three are OWNER's
        mine = await ds.next_deadlines(conn, limit=3, where=related_to(hsa_id=other))
        assert [(n.case_id, n.breached_unmet) for n in mine] == [(later.id, 0)]
        assert await ds.next_deadlines(conn, limit=3, where=related_to(hsa_id=other), keep=set()) == []
        kept = await ds.next_deadlines(conn, limit=2, keep={c.id for c in soon[2:]})
        assert [n.case_id for n in kept] == [c.id for c in soon[2:]]


async def test_the_scheduler_job_runs_in_the_background_and_wakes_the_relay(engine):
    clock = FixedClock(T0 + timedelta(days=10))
    case_id = await schedule(engine)
    woken = asyncio.Event()
    runtime = SimpleNamespace(engine=engine, outbox=OUTBOX, relay=SimpleNamespace(wake=woken.set))
    task = asyncio.create_task(scheduler_job(runtime, clock, 0.05)())
    try:
        await asyncio.wait_for(woken.wait(), timeout=10)
        await asyncio.sleep(0.2)  # a few more passes: still one breach
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [b["case_id"] for b in await breaches(engine)] == [str(case_id)]


async def test_the_handlers_port_starts_meets_and_stops_policy_deadlines(engine):
    from services.planning.settings import PlanningSettings
    from shared.clock import STOCKHOLM

    settings = PlanningSettings(deadline_day_counting="working", meeting_deadline_days=3)
    case = new_case()
    invited_at = datetime(2026, 12, 23, 15, 0, tzinfo=STOCKHOLM)
    async with engine.begin() as conn:
        await add_case(conn, case)
        port = ds.SqlDeadlines(conn)
        meeting = await port.start(case, "meeting", invited_at, settings, at=T0)
        assert meeting.due_at == datetime(2026, 12, 30, 15, 0, tzinfo=STOCKHOLM)  # after Christmas
        expiry = await port.start(case, "consent-expiry", datetime(2027, 3, 1, tzinfo=UTC), settings, at=T0)
        assert expiry.due_at < datetime(2027, 3, 1, tzinfo=UTC)
        assert [d.kind for d in await port.pending(case.id)] == ["meeting", "consent-expiry"]
        assert (await port.met(case.id, "meeting", at=invited_at + timedelta(days=1))).status == "met"
        assert await port.stop(case.id, at=T0, reason="consent renewed") == 1
        assert await port.pending(case.id) == []


async def test_schedule_and_meet_answer_the_row_as_stored(engine):
    """``schedule`` and ``meet`` answer without reading the row back: what they answer is what a read
    gives (aware UTC times, the columns left empty), on a new cycle, a superseding one and a met one."""
    from zoneinfo import ZoneInfo

    case_id = uuid4()
    due = (T0 + timedelta(days=3, microseconds=417)).astimezone(ZoneInfo("Europe/Stockholm"))
    async with engine.begin() as conn:
        first = await ds.schedule(conn, case_id, "invitation", due, OWNER, started_at=T0,
                                  case_reference="SIP-2026-ABC123", correlation_id="corr-9", at=T0)  # fmt: skip
        assert repr(first) == repr(await ds._get(conn, first.id))
        again = await ds.schedule(conn, case_id, "invitation", due, OWNER, started_at=T0, at=T0)
        assert repr(again) == repr(first)  # the same deadline again: the pending row itself
        moved = await ds.schedule(conn, case_id, "invitation", due + timedelta(days=1), OWNER,
                                  started_at=T0, at=T0 + timedelta(hours=1))  # fmt: skip
        assert (moved.cycle, moved.case_reference, moved.correlation_id) == (2, "SIP-2026-ABC123", "corr-9")
        assert repr(moved) == repr(await ds._get(conn, moved.id))
        met = await ds.meet(conn, case_id, "invitation", T0 + timedelta(days=1, microseconds=3))
        assert met.status == "met" and repr(met) == repr(await ds._get(conn, met.id))
        assert await ds.meet(conn, case_id, "invitation", T0 + timedelta(days=2)) is None
        assert [(d.cycle, d.status) for d in await ds.history_for(conn, case_id)] == [
            (1, "cancelled"), (2, "met"),
        ]  # fmt: skip
