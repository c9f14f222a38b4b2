"""A service's PostgreSQL connections are a fixed set (issue 21): a burst of concurrent transactions
waits for the pool's connections instead of opening (and on return closing) server processes beyond
them — each such process costs PostgreSQL a fork, an authentication and a cold catalogue cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.persistence import make_engine
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

pytestmark = pytest.mark.postgres


async def _burst(engine: sa.ext.asyncio.AsyncEngine, n: int) -> tuple[set[int], int]:
    """n concurrent transactions; (server processes that served them, most at once in a transaction)."""
    pids: set[int] = set()
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with engine.begin() as conn:
            inside += 1
            peak = max(peak, inside)
            pids.add(int(await conn.scalar(sa.text("SELECT pg_backend_pid()"))))
            await conn.execute(sa.text("SELECT pg_sleep(0.02)"))
            inside -= 1

    await asyncio.gather(*(one() for _ in range(n)))
    return pids, peak


async def test_a_burst_waits_for_the_pools_connections_and_opens_no_more(pg_url: str) -> None:
    engine = make_engine(pg_url, pg_pool_size=3)
    try:
        first, peak = await _burst(engine, 40)
        second, _ = await _burst(engine, 40)
        async with engine.connect() as conn:
            db = await conn.scalar(sa.text("SELECT current_database()"))
        async with engine.connect() as conn:
            # what the server has open for this database: only the pool's connections
            open_now = await conn.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db"), {"db": db}
            )
    finally:
        await engine.dispose()
    assert peak == 3  # all three used at once, never a fourth
    assert len(first) == 3
    assert second == first  # kept, not closed on return and opened again
    assert open_now == 3


def test_the_pool_size_is_the_setting(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIP_DATABASE_POOL_SIZE", "4")
    settings = ServiceSettings(database_url=pg_url, data_dir=str(tmp_path))
    runtime = ServiceRuntime("consent", settings, sa.MetaData())
    try:
        pool = runtime.engine.sync_engine.pool
        assert pool.size() == 4
        assert pool._max_overflow == 0  # type: ignore[attr-defined]
    finally:
        asyncio.run(runtime.engine.dispose())
