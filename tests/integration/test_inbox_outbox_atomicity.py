"""The inbox mark and the outbox rows commit with the effect, or not at all — on SQLite and PostgreSQL.

Regression: the sqlite3 driver's late BEGIN let the inbox SAVEPOINT commit on its own, so a handler
cancelled mid-way (a broker restart) left its message marked processed with no effect.
"""

import asyncio

import pytest
import sqlalchemy as sa

from shared.contracts import ConsentRequested
from shared.persistence import OutboxRelay, claim_inbox, enqueue, inbox_table, make_engine, outbox_table
from tests.support.personnummer import ADULT


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    md = sa.MetaData()
    effects = sa.Table("effects", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True))
    inbox, outbox = inbox_table(md), outbox_table(md)
    engine = make_engine(url)
    async with engine.begin() as c:
        await c.run_sync(md.create_all)
    yield engine, inbox, outbox, effects
    await engine.dispose()


async def _counts(engine, *tables):
    async with engine.connect() as c:
        return [await c.scalar(sa.select(sa.func.count()).select_from(t)) for t in tables]


async def test_failed_effect_rolls_back_the_inbox_mark_and_the_outbox(store):
    engine, inbox, outbox, effects = store  # noqa: RUF059
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            assert await claim_inbox(conn, inbox, "c", "m-1")
            await enqueue(conn, outbox, ConsentRequested(case_id="00000000-0000-0000-0000-000000000001",
                                                         patient_identifier=ADULT))  # fmt: skip
            raise RuntimeError("effect failed after the inbox claim")
    assert await _counts(engine, inbox, outbox) == [0, 0]


async def test_cancelled_handler_leaves_nothing_behind(store):
    engine, inbox, outbox, effects = store  # noqa: RUF059
    claimed = asyncio.Event()

    async def handler():
        async with engine.begin() as conn:
            await claim_inbox(conn, inbox, "c", "m-2")
            claimed.set()
            await asyncio.sleep(10)  # cancelled here, like a consumer whose connection is cut
            await conn.execute(effects.insert())

    task = asyncio.create_task(handler())
    await claimed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _counts(engine, inbox, effects) == [0, 0]
    # redelivered: processed exactly once
    async with engine.begin() as conn:
        assert await claim_inbox(conn, inbox, "c", "m-2")
        await conn.execute(effects.insert())
    async with engine.begin() as conn:
        assert not await claim_inbox(conn, inbox, "c", "m-2")
    assert await _counts(engine, inbox, effects) == [1, 1]


async def test_relay_publishes_each_row_once_and_keeps_failures(store):
    engine, inbox, outbox, effects = store  # noqa: RUF059
    async with engine.begin() as conn:
        for i in range(5):
            await enqueue(conn, outbox, ConsentRequested(case_id=f"00000000-0000-0000-0000-00000000000{i}",
                                                         patient_identifier=ADULT))  # fmt: skip
    published: list[str] = []
    fail_on = {3}

    async def publish(**kw):
        if len(published) in fail_on:
            fail_on.clear()
            raise ConnectionError("broker gone")
        published.append(kw["message_id"])

    relay = OutboxRelay(engine, outbox, publish, poll_interval=0.01)
    await relay.drain_once()
    assert len(published) == 3  # stopped at the failure, in order
    await relay.drain_once()
    assert len(published) == 5 and len(set(published)) == 5
    async with engine.connect() as c:
        assert (
            await c.scalar(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
            == 0
        )


async def _enqueue(engine, outbox, n):
    async with engine.begin() as conn:
        for i in range(n):
            await enqueue(conn, outbox, ConsentRequested(case_id=f"00000000-0000-0000-0000-{i:012d}",
                                                         patient_identifier=ADULT))  # fmt: skip
    async with engine.connect() as c:
        return list((await c.execute(sa.select(outbox.c.message_id).order_by(outbox.c.id))).scalars())


async def test_relay_claims_a_batch_in_outbox_order_and_takes_over_an_expired_claim(store):
    from datetime import UTC, datetime, timedelta

    engine, inbox, outbox, effects = store  # noqa: RUF059
    ids = await _enqueue(engine, outbox, 7)
    published: list[str] = []

    async def publish(**kw):
        published.append(kw["message_id"])

    relay = OutboxRelay(engine, outbox, publish, batch=3)
    assert await relay.drain_once()  # a full batch: there may be more
    assert published == ids[:3]
    # rows 4 and 5 are held by another relay (a live claim), row 6 by one that died (expired)
    now = datetime.now(UTC)
    async with engine.begin() as c:
        await c.execute(outbox.update().where(outbox.c.message_id.in_(ids[3:5]))
                        .values(claimed_by="other", claimed_until=now + timedelta(seconds=60)))  # fmt: skip
        await c.execute(outbox.update().where(outbox.c.message_id == ids[5])
                        .values(claimed_by="dead", claimed_until=now - timedelta(seconds=1)))  # fmt: skip
    assert not await relay.drain_once()  # rows 6 and 7: less than a batch
    assert published == ids[:3] + ids[5:]
    assert not await relay.drain_once()  # nothing else is due while the live claim lasts
    async with engine.begin() as c:
        await c.execute(outbox.update().where(outbox.c.message_id.in_(ids[3:5])).values(claimed_until=now))
    await relay.drain_once()
    assert sorted(published) == sorted(ids) and len(published) == 7
    async with engine.connect() as c:
        claims = (
            await c.execute(sa.select(outbox.c.claimed_by).where(outbox.c.published_at.is_(None)))
        ).all()
    assert claims == []


async def test_two_relays_on_one_outbox_publish_every_row_once(store):
    """Replicas: two relays (on PostgreSQL, two engines — SKIP LOCKED) drain one outbox together."""
    engine, inbox, outbox, effects = store  # noqa: RUF059
    ids = await _enqueue(engine, outbox, 120)
    second = make_engine(engine.url.render_as_string(hide_password=False))
    published: list[str] = []

    async def publish(**kw):
        await asyncio.sleep(0.001)  # the other relay runs a pass meanwhile
        published.append(kw["message_id"])

    relays = [OutboxRelay(e, outbox, publish, batch=10) for e in (engine, second)]

    async def drain(relay):
        while await relay.drain_once():
            pass

    try:
        for _ in range(3):  # a pass that found less than a batch may leave rows the other one held
            await asyncio.gather(*(drain(r) for r in relays))
    finally:
        await second.dispose()
    assert sorted(published) == sorted(ids)
    assert len(published) == len(set(published)) == 120


async def test_local_rows_are_handed_over_in_order_and_a_failure_counts_for_its_row_only(store):
    """A service's own work (``enqueue(local=True)``) goes to ``deliver_locally`` in outbox order,
    never to the broker; a failed hand-over counts one attempt for that row only (not for the untried
    rows behind it), and a sick dependency counts none."""
    from shared.dependencies import DATABASE, DependencyMonitor, DependencyUnavailable
    from shared.persistence import LOCAL_EXCHANGE

    engine, inbox, outbox, effects = store  # noqa: RUF059
    async with engine.begin() as conn:
        for i in range(4):
            msg = ConsentRequested(
                case_id=f"00000000-0000-0000-0000-00000000000{i}", patient_identifier=ADULT
            )
            await enqueue(conn, outbox, msg, local=i % 2 == 0)
    async with engine.connect() as c:
        rows = (
            await c.execute(sa.select(outbox.c.message_id, outbox.c.exchange).order_by(outbox.c.id))
        ).all()
    assert [r.exchange for r in rows] == [LOCAL_EXCHANGE, "consent.commands"] * 2
    order: list[tuple[str, str]] = []
    failures = [RuntimeError("handler failed"), DependencyUnavailable(DATABASE, "OperationalError: gone")]

    async def publish(**kw):
        order.append(("published", kw["message_id"]))

    async def deliver(row):
        if failures:
            raise failures.pop(0)
        order.append(("local", row.message_id))

    monitor = DependencyMonitor("test", backoff_initial=0.01, backoff_max=0.02)
    relay = OutboxRelay(engine, outbox, publish, poll_interval=0.01, dependencies=monitor)
    relay.deliver_locally = deliver

    async def attempts():
        async with engine.connect() as c:
            return list((await c.execute(sa.select(outbox.c.attempts).order_by(outbox.c.id))).scalars())

    await relay.drain_once()  # the first row fails: nothing after it goes
    assert order == [] and await attempts() == [1, 0, 0, 0]
    await relay.drain_once()  # the database is away: not the message's fault
    assert order == [] and await attempts() == [1, 0, 0, 0]
    await relay.drain_once()
    ids = [r.message_id for r in rows]
    assert order == [("local", ids[0]), ("published", ids[1]), ("local", ids[2]), ("published", ids[3])]
    await monitor.close()


async def test_the_relay_calls_the_database_back_only_when_it_has_stored_work(store):
    """An empty claim, or a claim whose hand-over met the outage again, says nothing about the
    database coming back (on a full SQLite disk such a transaction commits while every real write
    fails, and /readyz flapped to 200 with it); a pass that stored its rows as published does."""
    from shared.dependencies import DATABASE, DependencyMonitor, DependencyUnavailable

    engine, inbox, outbox, effects = store  # noqa: RUF059
    monitor = DependencyMonitor("test", backoff_initial=0.01, backoff_max=0.02)
    outage = [DependencyUnavailable(DATABASE, "OperationalError: database or disk is full")]

    async def publish(**kw):
        pass

    async def deliver(row):
        if outage:
            raise outage.pop(0)

    relay = OutboxRelay(engine, outbox, publish, poll_interval=0.01, dependencies=monitor)
    relay.deliver_locally = deliver
    monitor.down(DATABASE, "OperationalError: database or disk is full")
    await relay.drain_once()  # nothing to claim
    assert not monitor.is_up(DATABASE)
    async with engine.begin() as conn:
        await enqueue(conn, outbox, ConsentRequested(case_id="00000000-0000-0000-0000-0000000000aa", patient_identifier=ADULT),
                      local=True)  # fmt: skip
    await relay.drain_once()  # claimed, but the hand-over met the outage
    assert not monitor.is_up(DATABASE)
    await relay.drain_once()  # handed over and marked
    assert monitor.is_up(DATABASE)
    await monitor.close()
