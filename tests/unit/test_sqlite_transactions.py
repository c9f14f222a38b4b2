"""SQLite transactions of the services (shared.persistence.make_engine with the inline driver).

Every transaction takes the write lock up front (BEGIN IMMEDIATE). The inline driver starts it
directly on the sqlite3 connection — not as a statement through SQLAlchemy's execution machinery —
and only when another process holds the lock does it wait, off the event loop, for as long as the
busy timeout allows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from shared.persistence import make_engine

META = sa.MetaData()
ROWS = sa.Table("rows", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text))


async def _engine(path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(META.create_all)
    return engine


def test_a_transaction_takes_the_write_lock_without_a_begin_statement(tmp_path: Path) -> None:
    async def run() -> list[str]:
        engine = await _engine(tmp_path / "t.db")
        seen: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        async with engine.begin() as conn:
            await conn.execute(ROWS.insert(), {"v": "a"})
            # the write lock is held already: another connection cannot write meanwhile
            other = sqlite3.connect(tmp_path / "t.db", timeout=0)
            try:
                try:
                    other.execute("BEGIN IMMEDIATE")
                    locked = False
                except sqlite3.OperationalError:
                    locked = True
            finally:
                other.close()
            assert locked
        await engine.dispose()
        return seen

    statements = asyncio.run(run())
    assert not any(s.upper().startswith("BEGIN") for s in statements), statements
    assert any(s.upper().startswith("INSERT") for s in statements)


def test_a_lock_held_by_another_process_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    async def run() -> tuple[float, int, int]:
        engine = await _engine(tmp_path / "t.db")
        holder = sqlite3.connect(tmp_path / "t.db", timeout=0, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # "another process" holds the write lock
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def release() -> None:
            await asyncio.sleep(0.3)
            holder.execute("INSERT INTO rows (v) VALUES ('theirs')")
            holder.execute("COMMIT")

        t = asyncio.create_task(ticker())
        r = asyncio.create_task(release())
        started = time.perf_counter()
        async with engine.begin() as conn:
            waited = time.perf_counter() - started
            await conn.execute(ROWS.insert(), {"v": "ours"})
        t.cancel()
        await r
        async with engine.connect() as conn:
            count = int(await conn.scalar(sa.select(sa.func.count()).select_from(ROWS)) or 0)
        holder.close()
        await engine.dispose()
        return waited, ticks, count

    waited, ticks, count = asyncio.run(run())
    assert waited >= 0.25  # it waited for the other writer instead of failing
    assert ticks >= 10  # and the event loop ran on meanwhile
    assert count == 2  # both transactions took effect


def test_a_statement_makes_one_trip_to_the_event_loop_and_a_commit_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening and closing a cursor, commit and rollback run directly on the sqlite3 connection;
    only the statement itself is handed to the event loop (SQLAlchemy insists on one await)."""
    import sqlalchemy.connectors.asyncio as adapter

    trips: list[str] = []
    real = adapter.await_

    def counting(awaitable):  # type: ignore[no-untyped-def]
        trips.append(getattr(awaitable, "__qualname__", type(awaitable).__name__))
        return real(awaitable)

    async def run() -> None:
        engine = await _engine(tmp_path / "t.db")
        async with engine.connect() as conn:  # the pooled connection exists before counting
            await conn.execute(sa.select(1))
        monkeypatch.setattr(adapter, "await_", counting)
        async with engine.begin() as conn:
            await conn.execute(ROWS.insert(), {"v": "a"})
            await conn.execute(ROWS.insert(), {"v": "b"})
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(ROWS.c.v).order_by(ROWS.c.id))).all()
            assert [r.v for r in rows] == ["a", "b"]
        try:
            async with engine.begin() as conn:
                await conn.execute(ROWS.insert(), {"v": "c"})
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        monkeypatch.setattr(adapter, "await_", real)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(ROWS)) == 2
        await engine.dispose()

    asyncio.run(run())
    # three inserts and one select: one trip each, nothing for cursors, commit or rollback
    assert len(trips) == 4, trips
