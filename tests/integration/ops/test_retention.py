"""Retention (shared/retention.py and each service's adapters/retention.py), on SQLite and on PostgreSQL
(SIP_TEST_DATABASE): what each service prunes (old intake messages whose effects are complete, old
inbox rows, published outbox rows, the payload of old sent or cancelled notifications, AuditEvents older
than five years), what it never prunes (unhandled, refused and dead-lettered messages, unpublished
outbox rows, access logs younger than the audit retention, consents, delivery records and their dedupe
key), and that a prune racing live writes — or another replica's prune — loses nothing.

The services' own apps over their real databases (nothing connects to the broker); rows are written
directly, with their ages, then the service's pruner (``app.state.pruner``) runs as its loop does.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.consent.adapters.store import audit_events, consents
from services.consent.app import create_app as consent_app
from services.consent.settings import ConsentSettings
from services.notify.adapters.retention import PRUNED_BODY
from services.notify.adapters.store import (
    SqlNotificationRepository,
    notification_details,
    notification_needs,
    notifications,
)
from services.notify.app import create_app as notify_app
from services.notify.handlers import accept_invitation
from services.notify.settings import NotifySettings
from services.planning.app import create_app as planning_app
from services.planning.intake.store import intake_tables, message_views_table
from services.planning.settings import PlanningSettings
from shared.clock import FixedClock
from shared.contracts import MeetingNeeds, SendInvitation
from shared.directory import load_directory
from shared.persistence import utcnow
from shared.retention import Pruner
from tests.support.dbmode import ON_POSTGRES
from tests.support.personnummer import ADULTS

pytestmark = [*([pytest.mark.postgres] if ON_POSTGRES else [])]
REPO = Path(__file__).resolve().parents[3]
DIRECTORY = str(REPO / "config/directory.yaml")
PNR = ADULTS[1]
DAY = timedelta(days=1)


async def _app(make, settings_cls, tmp_path: Path, **settings):
    app = make(settings_cls(data_dir=str(tmp_path), directory_path=DIRECTORY, **settings))
    await app.state.runtime.prepare_database()
    return app


def _message(n: int, age: timedelta, status: str, *, effect: bool = True, events: str = '[{"kind": "x"}]',
             replay_of: int | None = None) -> dict:  # fmt: skip
    return {
        "source": "hl7v2", "sender": "PAS|SJH", "control_id": f"c{n}-{uuid4().hex[:8]}", "message_type": "ADT^A03",
        "received_at": utcnow() - age, "content_sha256": "0" * 64, "raw": b"MSH|...", "outcome": "AA",
        "response_body": b"ACK", "events": events, "status": status, "correlation_id": str(uuid4()),
        "patient_identifier": PNR, "effect": json.dumps({"case_id": None}) if effect else None,
        "replay_of": replay_of,
    }  # fmt: skip


async def _insert(conn, table: sa.Table, row: dict) -> int:
    return int((await conn.execute(table.insert().values(**row))).inserted_primary_key[0])


async def _ids(engine, table: sa.Table) -> set:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(table.primary_key.columns[0]))).scalars())


def _pruned(app) -> dict[str, float]:
    counter = app.state.runtime.metrics.retention_pruned
    return {
        m.labels["kind"]: m.value
        for fam in counter.collect()
        for m in fam.samples
        if m.name.endswith("_total")
    }


async def test_planning_prunes_complete_old_messages_and_keeps_what_is_still_needed(tmp_path):
    app = await _app(planning_app, PlanningSettings, tmp_path, mllp_enabled=False)
    rt = app.state.runtime
    t, views = intake_tables(rt.metadata), message_views_table(rt.metadata)
    old, young = 100 * DAY, 10 * DAY
    async with rt.engine.begin() as conn:
        gone = {
            "effected": await _insert(conn, t, _message(1, old, "effected")),
            "handled without a case": await _insert(conn, t, _message(2, old, "accepted")),
            "no event": await _insert(conn, t, _message(3, old, "accepted", effect=False, events="[]")),
        }
        # a dead-lettered original whose replay (also old) got the effect: the lineage goes as one
        dead = await _insert(conn, t, _message(4, old, "dead-lettered", effect=False))
        gone["dead-lettered, replayed"] = dead
        gone["its effected replay"] = await _insert(conn, t, _message(5, old, "effected", replay_of=dead))
        kept = {
            "unhandled": await _insert(conn, t, _message(6, old, "accepted", effect=False)),
            "refused": await _insert(conn, t, _message(7, old, "refused", effect=False)),
            "dead-lettered": await _insert(conn, t, _message(8, old, "dead-lettered", effect=False)),
            "young effected": await _insert(conn, t, _message(9, young, "effected")),
        }
        # a replay still young keeps its whole lineage (the original would be replayable again)
        dead2 = await _insert(conn, t, _message(10, old, "dead-lettered", effect=False))
        kept["original of a young replay"] = dead2
        kept["young replay"] = await _insert(conn, t, _message(11, young, "effected", replay_of=dead2))
        # a replay under way (unhandled) keeps its lineage too
        dead3 = await _insert(conn, t, _message(12, old, "dead-lettered", effect=False))
        kept["original of a replay under way"] = dead3
        kept["replay under way"] = await _insert(
            conn, t, _message(13, old, "accepted", effect=False, replay_of=dead3)
        )
        await conn.execute(
            views.insert(),
            [
                {
                    "kind": "raw",
                    "message_id": gone["effected"],
                    "viewer_hsa_id": "X",
                    "viewed_at": utcnow() - 3000 * DAY,
                }
            ],
        )
        await conn.execute(
            rt.inbox.insert(),
            [
                {"consumer": "q", "message_id": "old", "processed_at": utcnow() - 31 * DAY},
                {"consumer": "q", "message_id": "young", "processed_at": utcnow() - 29 * DAY},
            ],
        )
        for mid, created, published in (
            ("published-old", 30 * DAY, 8 * DAY),
            ("published-young", 30 * DAY, 6 * DAY),
            ("never-published", 300 * DAY, None),
        ):
            await conn.execute(
                rt.outbox.insert().values(
                    message_id=mid, exchange="x", routing_key="k", body="{}", created_at=utcnow() - created,
                    published_at=utcnow() - published if published else None, attempts=0,
                )
            )  # fmt: skip
    pruner: Pruner = app.state.pruner
    dry = await pruner.prune_once(dry_run=True)
    assert dry == {"intake_messages": 4, "inbox": 1, "outbox": 1}  # lineages: the replay goes with its root
    assert len(await _ids(rt.engine, t)) == 13  # a dry run changes nothing

    assert await pruner.prune_once() == {"intake_messages": 5, "inbox": 1, "outbox": 1}
    left = await _ids(rt.engine, t)
    assert left == set(kept.values()), {k: v in left for k, v in {**gone, **kept}.items()}
    async with rt.engine.connect() as conn:
        assert (await conn.execute(sa.select(rt.inbox.c.message_id))).scalars().all() == ["young"]
        outbox = set((await conn.execute(sa.select(rt.outbox.c.message_id))).scalars())
        assert outbox == {"published-young", "never-published"}
        # operators' views of raw messages are an access log: never pruned with the messages
        assert (await conn.scalar(sa.select(sa.func.count()).select_from(views))) == 1
    assert _pruned(app) == {"intake_messages": 5, "inbox": 1, "outbox": 1}
    assert await pruner.prune_once() == {"intake_messages": 0, "inbox": 0, "outbox": 0}  # idempotent
    await rt.engine.dispose()


async def test_a_prune_racing_live_intake_and_a_second_replica_loses_nothing(tmp_path):
    """3,000 old effected messages and old inbox rows are pruned in batches of 100 by two pruners at once
    (two replicas) while live traffic stores new messages, marks effects and claims inbox ids: every
    live row is there afterwards, every old one is gone, and none is counted twice."""
    app = await _app(planning_app, PlanningSettings, tmp_path, mllp_enabled=False, retention_batch=100)
    rt = app.state.runtime
    t = intake_tables(rt.metadata)
    old_n = 3000
    async with rt.engine.begin() as conn:
        await conn.execute(t.insert(), [_message(i, 200 * DAY, "effected") for i in range(old_n)])
        await conn.execute(
            rt.inbox.insert(),
            [
                {"consumer": "q", "message_id": f"old-{i}", "processed_at": utcnow() - 60 * DAY}
                for i in range(old_n)
            ],
        )
    live_ids: list[int] = []
    stop = asyncio.Event()

    async def live() -> None:
        n = 0
        while not stop.is_set() or n < 50:
            async with rt.engine.begin() as conn:
                row = _message(100_000 + n, timedelta(0), "accepted", effect=False)
                live_ids.append(await _insert(conn, t, row))
                await conn.execute(
                    rt.inbox.insert().values(consumer="q", message_id=f"live-{n}", processed_at=utcnow())
                )
            async with rt.engine.begin() as conn:  # the effect written back, as the subscriber does
                await conn.execute(
                    t.update()
                    .where(t.c.id == live_ids[-1])
                    .values(status="effected", effect='{"case_id": "c"}')
                )
            n += 1
            await asyncio.sleep(0)

    replica = Pruner("planning", rt.engine, app.state.pruner.kinds, batch=100, pause=0)
    traffic = asyncio.create_task(live())
    first, second = await asyncio.gather(app.state.pruner.prune_once(), replica.prune_once())
    stop.set()
    await traffic
    assert first["intake_messages"] + second["intake_messages"] == old_n
    assert first["inbox"] + second["inbox"] == old_n
    assert await _ids(rt.engine, t) == set(live_ids)
    async with rt.engine.connect() as conn:
        inbox = set((await conn.execute(sa.select(rt.inbox.c.message_id))).scalars())
    assert inbox == {f"live-{n}" for n in range(len(live_ids))}
    await rt.engine.dispose()


async def test_the_retention_loop_runs_on_its_schedule(tmp_path):
    app = await _app(planning_app, PlanningSettings, tmp_path, mllp_enabled=False)
    rt = app.state.runtime
    t = intake_tables(rt.metadata)
    async with rt.engine.begin() as conn:
        await conn.execute(t.insert(), [_message(i, 100 * DAY, "effected") for i in range(3)])
    loop = asyncio.create_task(app.state.pruner.run(0.05, first_after=0))
    try:
        for _ in range(200):
            if not await _ids(rt.engine, t):
                break
            await asyncio.sleep(0.05)
        assert not await _ids(rt.engine, t)
    finally:
        loop.cancel()
    await rt.engine.dispose()


def _audit(age: timedelta, action: str = "read") -> dict:
    return {
        "id": str(uuid4()), "recorded_at": utcnow() - age, "patient_identifier": PNR, "action": action,
        "outcome": "permit", "reason": "consent", "basis": "consent", "channel": "http",
    }  # fmt: skip


async def test_consent_keeps_audit_events_five_years_and_consents_for_ever(tmp_path):
    app = await _app(consent_app, ConsentSettings, tmp_path)
    rt = app.state.runtime
    keep = [_audit(1826 * DAY - timedelta(hours=1)), _audit(400 * DAY), _audit(timedelta(0))]
    drop = [_audit(6 * 365 * DAY), _audit(1828 * DAY, "decision")]
    async with rt.engine.begin() as conn:
        await conn.execute(audit_events.insert(), keep + drop)
        await conn.execute(
            consents.insert().values(
                id=str(uuid4()), patient_identifier=PNR, decision="granted", purposes="[]", recipients="[]",
                given_by="patient", method="verbal", recorded_by_hsa_id="X", recorded_at=utcnow() - 4000 * DAY,
                status="withdrawn",
            )
        )  # fmt: skip
        await conn.execute(
            rt.inbox.insert().values(consumer="q", message_id="m", processed_at=utcnow() - 40 * DAY)
        )
    assert await app.state.pruner.prune_once() == {"audit_events": 2, "inbox": 1, "outbox": 0}
    assert await _ids(rt.engine, audit_events) == {a["id"] for a in keep}
    assert len(await _ids(rt.engine, consents)) == 1
    await rt.engine.dispose()


def test_an_audit_retention_below_the_law_is_refused_at_start(monkeypatch):
    with pytest.raises(ValueError, match=r"five years .*HSLF-FS 2016:40.*1826"):
        ConsentSettings(retention_audit_days=365)
    monkeypatch.setenv("SIP_RETENTION_AUDIT_DAYS", "1825")
    with pytest.raises(ValueError, match="shorter than the law allows"):
        ConsentSettings()
    monkeypatch.setenv("SIP_RETENTION_AUDIT_DAYS", "0")  # keep for ever
    assert ConsentSettings().retention_audit_days == 0
    monkeypatch.setenv("SIP_RETENTION_AUDIT_DAYS", "3650")
    assert ConsentSettings().retention_audit_days == 3650
    monkeypatch.setenv("SIP_RETENTION_INBOX_DAYS", "2")  # shorter than redeliveries may come
    with pytest.raises(ValueError, match="retention_inbox_days"):
        ConsentSettings()


async def test_notify_blanks_old_payloads_and_keeps_the_delivery_record_and_its_dedupe(tmp_path):
    app = await _app(notify_app, NotifySettings, tmp_path)
    rt = app.state.runtime
    directory = load_directory(DIRECTORY)
    cases = {}
    for status in ("sent", "cancelled", "pending", "failed", "young-sent"):
        case_id = uuid4()
        cmd = SendInvitation(
            case_id=case_id, case_reference=f"SIP-{case_id.hex[:6]}", consent_id=uuid4(),
            recipients=("SE2321000016-VC001",), invitation_due_at=utcnow() + 3 * DAY,
            plan_url=f"https://sip.example/fhir/CarePlan/{case_id}", organizer_hsa_id="SE2321000016-VC001",
            meeting_needs=MeetingNeeds(interpreter_language="ar"),
        )  # fmt: skip
        async with rt.unit_of_work() as uow:
            await accept_invitation(
                cmd, directory=directory, repo=SqlNotificationRepository(uow.conn), clock=FixedClock(utcnow())
            )
        cases[status] = (case_id, cmd)
    async with rt.engine.begin() as conn:
        for status, (case_id, _) in cases.items():
            age = 10 * DAY if status == "young-sent" else 40 * DAY
            await conn.execute(
                notifications.update()
                .where(notifications.c.case_id == str(case_id))
                .values(
                    status=status.removeprefix("young-"), created_at=utcnow() - age, sent_at=utcnow() - age
                )
            )
        rows = (await conn.execute(sa.select(notifications.c.id, notifications.c.case_id))).all()
    by_status = {s: [r for r in rows if r.case_id == str(c)] for s, (c, _) in cases.items()}
    assert all(by_status.values())
    assert (await app.state.pruner.prune_once())["notification_payload"] == len(by_status["sent"]) + len(
        by_status["cancelled"]
    )
    async with rt.engine.connect() as conn:
        got = {
            r.id: r
            for r in await conn.execute(
                sa.select(
                    notifications, notification_details.c.ics, notification_details.c.plan_url
                ).outerjoin(notification_details, notification_details.c.id == notifications.c.id)
            )
        }
        needs = set((await conn.execute(sa.select(notification_needs.c.id))).scalars())
    for status, items in by_status.items():
        for r in items:
            row = got[r.id]  # the delivery record is kept, whatever happened to its payload
            blanked = status in ("sent", "cancelled")
            assert (row.body == PRUNED_BODY) is blanked, status
            assert (row.address is None) is blanked, status
            assert (row.payload_pruned_at is not None) is blanked, status
            if blanked:
                assert row.ics is None, status
            assert (r.id in needs) is not blanked, status
            assert row.recipient_hsa_id and row.channel and row.plan_url, status
    # a redelivered command finds the kept dedupe key: no second notification
    sent_case, sent_cmd = cases["sent"]
    async with rt.unit_of_work() as uow:
        await accept_invitation(
            sent_cmd,
            directory=directory,
            repo=SqlNotificationRepository(uow.conn),
            clock=FixedClock(utcnow()),
        )
    async with rt.engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(notifications)
            .where(notifications.c.case_id == str(sent_case))
        )
    assert n == len(by_status["sent"])
    with pytest.raises(IntegrityError):  # and the key itself still refuses a second row
        async with rt.engine.begin() as conn:
            full = got[by_status["sent"][0].id]
            copy = {c.name: getattr(full, c.name) for c in notifications.c} | {"id": str(uuid4())}
            await conn.execute(notifications.insert().values(copy))
    assert (await app.state.pruner.prune_once())["notification_payload"] == 0
    await rt.engine.dispose()


async def test_sipctl_prune_counts_then_prunes_once(tmp_path, monkeypatch, capsys):
    from sipctl.__main__ import main

    app = await _app(planning_app, PlanningSettings, tmp_path, mllp_enabled=False)
    rt = app.state.runtime
    t = intake_tables(rt.metadata)
    async with rt.engine.begin() as conn:
        await conn.execute(t.insert(), [_message(i, 100 * DAY, "effected") for i in range(4)])
    await rt.engine.dispose()
    monkeypatch.setenv("SIP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLANNING_MLLP_ENABLED", "false")

    def sipctl(*argv: str) -> dict:
        with pytest.raises(SystemExit) as done:
            main(["prune", "--service", "planning", *argv])
        assert done.value.code == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # sipctl runs its own event loop, as from a shell: here in a thread of its own
    dry = await asyncio.to_thread(sipctl, "--dry-run")
    assert dry == {
        "service": "planning",
        "dry_run": True,
        "pruned": {"intake_messages": 4, "inbox": 0, "outbox": 0},
    }
    assert len(await _ids(rt.engine, t)) == 4
    done = await asyncio.to_thread(sipctl)
    assert done["pruned"]["intake_messages"] == 4
    assert not await _ids(rt.engine, t)
    await rt.engine.dispose()


async def test_a_batch_is_sized_to_its_time_so_the_live_path_never_waits_long(tmp_path):
    """On SQLite each batch's transaction (which holds the write lock every live write waits for)
    aims at ``batch_seconds``, and the pause after it is at least three times as long: a kind whose
    rows cost 0.2 ms each is pruned in batches of about 25 rows with a 5 ms aim (not the 500 the row
    limit allows), every row goes, and the size learnt carries over to the next pass. With
    ``batch_seconds`` 0 — and on PostgreSQL, where a batch locks only its own rows — the row limit
    alone decides."""
    import time

    from shared.persistence import make_engine, sqlite_url
    from shared.retention import FIRST_BATCH, IDLE_PER_BUSY, MIN_BATCH, Kind, delete_by_key
    from tests.support.dbmode import database_url

    url = database_url(tmp_path, "retention") if ON_POSTGRES else sqlite_url(tmp_path / "r.db")
    engine = make_engine(url)
    metadata = sa.MetaData()
    rows = sa.Table("pruned_rows", metadata, sa.Column("id", sa.Integer, primary_key=True))
    delete = delete_by_key(rows)
    held: list[tuple[int, float]] = []  # (rows, seconds) per batch

    async def slow_apply(conn, keys):
        started = time.perf_counter()
        time.sleep(0.0002 * len(keys))  # a transaction that holds the database for 0.2 ms per row
        done = await delete(conn, keys)
        held.append((len(keys), time.perf_counter() - started))
        return done

    async def fill(n: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(rows.delete())
            await conn.execute(rows.insert(), [{"id": i} for i in range(n)])

    kind = Kind("r", 1, lambda cutoff: sa.select(rows.c.id).order_by(rows.c.id), slow_apply)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        await fill(600)
        pruner = Pruner("test", engine, [kind], batch=500, pause=0, batch_seconds=0.005)
        started = time.perf_counter()
        assert (await pruner.prune_once())["r"] == 600
        wall = time.perf_counter() - started
        if ON_POSTGRES:
            assert [n for n, _ in held] == [500, 100]
            return
        assert held[0][0] == FIRST_BATCH
        settled = held[2:-1]  # from 50 it halves at most once per batch; the last is what was left
        # about 25 rows (5 ms at 0.2 ms a row); a batch the machine's other work slowed halves the next,
        # never below the floor, and the time per batch stays near the aim (the median: one slowed
        # batch is the machine's, not the sizing's)
        assert settled and all(MIN_BATCH <= n <= 50 for n, _ in settled), held
        assert statistics.median(seconds for _, seconds in settled) < 0.01, held
        # after each batch (but the last) a pause at least IDLE_PER_BUSY times as long: the pass holds
        # the database for at most a quarter of its time
        assert wall >= 0.95 * (1 + IDLE_PER_BUSY) * sum(seconds for _, seconds in held[:-1]), (wall, held)
        learnt = pruner.sizes["r"]
        assert MIN_BATCH <= learnt <= 50

        held.clear()
        await fill(100)
        assert (await pruner.prune_once())["r"] == 100
        assert held[0][0] == learnt  # the next pass starts where the last one ended

        held.clear()
        await fill(60)
        fixed = Pruner("test", engine, [kind], batch=25, pause=0, batch_seconds=0)
        assert (await fixed.prune_once())["r"] == 60
        assert [n for n, _ in held] == [25, 25, 10]
    finally:
        await engine.dispose()


def test_one_slow_batch_halves_the_next_at_most_and_none_goes_below_the_floor():
    """A commit that happened to checkpoint SQLite's WAL (100 ms) halves the next batch, not cuts it
    tenfold; a kind whose batches cost more than the aim whatever their size stays at MIN_BATCH, where
    a batch's fixed cost would otherwise be all of its time; a fast one doubles up to the row limit."""
    from shared.persistence import make_engine
    from shared.retention import MIN_BATCH

    engine = make_engine("sqlite:///:memory:")
    pruner = Pruner("test", engine, [], batch=500, batch_seconds=0.01)
    assert pruner._resize(200, 0.1) == 100
    assert pruner._resize(200, 0.01) == 200
    assert pruner._resize(MIN_BATCH, 0.05) == MIN_BATCH
    assert pruner._resize(300, 0.001) == 500
    assert Pruner("test", engine, [], batch=4, batch_seconds=0.01)._resize(4, 1.0) == 4
