"""Foreground first (shared.foreground, issue 21): the intake's transactions take the service's
connection before background work waiting for it, and background work waits to begin while the intake
stores a message — bounded, so it is slowed and never starved. SQLite, one connection per process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.planning.intake import IntakeService, intake_tables
from shared.foreground import Foreground, foreground_of, priority_pool
from shared.persistence import make_engine
from tests.unit.intake.messages import adt_bytes, msa

META = sa.MetaData()
LOG = sa.Table("log", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("who", sa.Text))
INTAKE = intake_tables(META)


async def _engine(path: Path) -> AsyncEngine:
    engine = make_engine(f"sqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(META.create_all)
    return engine


async def _order(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(sa.select(LOG.c.who).order_by(LOG.c.id))).all())


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_an_intake_commit_is_not_queued_behind_waiting_background_transactions(tmp_path: Path) -> None:
    """A long background transaction holds the one connection; another background one waits for it;
    then a message arrives. When the long one ends the message is stored next — FIFO would store the
    waiting background transaction first and answer the sender after it."""
    engine = await _engine(tmp_path / "p.db")
    release = asyncio.Event()

    async def long_background() -> None:
        async with engine.begin() as conn:
            await conn.execute(LOG.insert(), {"who": "long background"})
            await release.wait()  # e.g. a relay pass, a retention batch

    async def waiting_background() -> None:
        async with engine.begin() as conn:
            await conn.execute(LOG.insert(), {"who": "waiting background"})

    async def on_event(conn: object, ev: object) -> None:
        await conn.execute(LOG.insert(), {"who": "intake"})  # type: ignore[attr-defined]

    intake = IntakeService(engine, INTAKE, on_event=on_event)
    try:
        holder = asyncio.create_task(long_background())
        await _settle()
        waiter = asyncio.create_task(waiting_background())
        await _settle()
        answer = asyncio.create_task(intake.handle_hl7(adt_bytes(control_id="FG-1")))
        await _settle()
        assert not answer.done()  # the connection is still held
        release.set()
        assert msa(await asyncio.wait_for(answer, 5))[1] == "AA"
        await asyncio.wait_for(asyncio.gather(holder, waiter), 5)
        assert await _order(engine) == ["long background", "intake", "waiting background"]
    finally:
        await engine.dispose()


async def test_background_work_waits_to_begin_while_the_intake_stores_and_is_never_starved(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path / "p.db")
    fg = foreground_of(engine)
    assert fg.max_wait > 0 and fg.grace >= 0
    fg.max_wait, fg.grace = 0.3, 0.0

    async def background() -> float:
        start = time.monotonic()
        async with engine.begin() as conn:
            await conn.execute(LOG.insert(), {"who": "background"})
        return time.monotonic() - start

    try:
        task = asyncio.create_task(background())  # outside the foreground's context: background
        with fg.work():  # a message being stored: the background transaction does not begin
            await asyncio.sleep(0.05)
            assert not task.done()
            async with engine.begin() as conn:  # the foreground itself is not held up
                await conn.execute(LOG.insert(), {"who": "intake"})
        waited = await asyncio.wait_for(task, 5)
        assert 0.04 <= waited < 0.3  # it began when the foreground ended, not at max_wait
        assert await _order(engine) == ["intake", "background"]

        # foreground work that never ends: each background transaction still begins after max_wait
        fg.max_wait = 0.05
        task = asyncio.create_task(background())
        with fg.work():
            waited = await asyncio.wait_for(task, 5)
        assert 0.04 <= waited < 1.0
        assert fg.background_waits == 2
    finally:
        await engine.dispose()


async def test_background_work_gives_a_sender_the_grace_period_for_its_next_message() -> None:
    fg = Foreground(grace=0.05, max_wait=1.0)
    with fg.work():
        pass
    start = time.monotonic()
    await fg.turn()  # the foreground ended just now: wait out the grace period, not max_wait
    assert 0.03 <= time.monotonic() - start < 0.5
    start = time.monotonic()
    await fg.turn()  # long after: no wait
    assert time.monotonic() - start < 0.02


async def test_the_priority_pool_keeps_its_timeout_and_survives_cancelled_waiters(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        poolclass=priority_pool(Foreground(grace=0)),
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    try:
        async with engine.connect() as held:
            await held.execute(sa.text("SELECT 1"))
            with pytest.raises(sa.exc.TimeoutError):
                async with engine.connect():
                    pass
            cancelled = asyncio.create_task(engine.connect().start())
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        # the connection went back to the pool, not to the cancelled waiter
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT 1")) == 1
        assert engine.sync_engine.pool.checkedout() == 0
        # dispose makes a new pool of the same class: the same Foreground
        fg = foreground_of(engine)
        await engine.dispose()
        assert foreground_of(engine) is fg
    finally:
        await engine.dispose()
