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
